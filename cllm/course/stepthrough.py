"""The logic behind the step-through view (``cllm.course.widgets.StepThroughWidget``), without any widget.

    st = StepThrough.from_model(model, idx, targets)   # runs forward, then backward with a trace
    st.steps[0]            # ("forward", "h.0.ln_1.in", array)
    st.current()           # {"phase": "forward", "name": ..., "shape": ..., "stats": {...}, ...}
    st.next(); st.prev()   # move one op along; forward first, then backward
    heatmap_array(a)       # the 2-D slice of an activation that a heat map shows
    st.position_labels()   # the characters of batch element 0, one per position: ['T', 'h', 'e', '␣', ...]

The forward steps are the buffers of the real :class:`cllm.activations.ActivationStore`, in the order
the forward pass wrote them (``acts.order``); the backward steps are the gradients with respect to
those buffers, in the order ``Model.backward(acts, trace=...)`` computed them. Nothing is recomputed
for display: what you see is what the backward pass read and wrote.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

PHASES = ("forward", "backward")


def array_stats(a) -> dict:
    """mean, std, min and max of an array, as Python floats (computed in float64)."""
    a = np.asarray(a, dtype=np.float64)
    return dict(mean=float(a.mean()), std=float(a.std()), min=float(a.min()), max=float(a.max()))


def _clean(v: float, digits: int = 4) -> float:
    """``v`` rounded to ``digits`` decimals, with -0.0 turned into 0.0 (a sign that means nothing)."""
    return round(float(v), digits) + 0.0


def heatmap_array(a) -> np.ndarray:
    """Reduce an activation or gradient to the 2-D array a heat map shows.

    0-D -> (1, 1); 1-D (n,) -> (1, n); 2-D as it is (e.g. LayerNorm statistics (B, T));
    3-D (B, T, C) -> the first batch element (T, C); 4-D (B, H, T, T) -> first batch element, first
    head (T, T); more dimensions -> leading indices 0 until two are left.
    """
    a = np.asarray(a)
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a[None, :]
    while a.ndim > 2:
        a = a[0]
    return a


# how a token's text is written on an axis: whitespace made visible, other control characters escaped
_VISIBLE = {" ": "\u2423", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def token_text(text: str) -> str:
    """``text`` (one token's text) as an axis label shows it: a space as '␣', a newline as '\\n', a tab
    as '\\t', other control characters as their escape (``'\\x07'``), the empty string as '∅'."""
    if text == "":
        return "\u2205"
    out = []
    for ch in text:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif not ch.isprintable():
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


def token_labels(tokenizer, ids) -> list:
    """One label per id: ``tokenizer.decode([id])`` of each id on its own, through :func:`token_text`."""
    return [token_text(tokenizer.decode(np.array([int(i)], dtype=np.int64))) for i in np.ravel(ids)]


# what each stored buffer is, by the last part of its name (l is the block index)
_NOTES = {
    "ln_1.in": "the residual stream entering the block (for block 0: token + position embeddings)",
    "ln_1.mean": "LayerNorm mean of each position's vector",
    "ln_1.rstd": "LayerNorm 1/std of each position's vector (large when the stream is small)",
    "ln_1.out": "the normalised stream, input of the query/key/value projection",
    "attn.qkv": "queries | keys | values, side by side (3 x d_model columns)",
    "attn.probs": "attention probabilities: row i says how much position i reads from each position j <= i",
    "attn.y": "the heads' outputs merged, input of the attention's output projection",
    "ln_2.in": "the residual stream after the attention branch was added",
    "ln_2.mean": "LayerNorm mean before the MLP",
    "ln_2.rstd": "LayerNorm 1/std before the MLP",
    "ln_2.out": "the normalised stream, input of the MLP",
    "mlp.pre": "MLP pre-activation (d_ff hidden units)",
    "mlp.act": "MLP activation: GELU of the pre-activation",
    "ln_f.in": "the residual stream leaving the last block",
    "ln_f.mean": "final LayerNorm mean",
    "ln_f.rstd": "final LayerNorm 1/std",
    "ln_f.out": "the final hidden state, multiplied by the (tied) embedding to give the logits",
    "logits": "a score for every possible next character at every position",
    "probs": "softmax of the logits: the predicted distribution of the next character",
}


def buffer_note(phase: str, name: str) -> str:
    """One sentence on what the step shows."""
    key = name.split(".", 2)[2] if name.startswith("h.") else name
    note = _NOTES.get(key, "a saved tensor")
    if phase == "backward":
        if name == "logits":
            return "gradient at the logits: (softmax - one-hot) / number of targets, where backward starts"
        return f"gradient of the loss with respect to it ({note})"
    return note


def _axis_kinds(name: str, ndim: int) -> tuple:
    """What the rows and the columns of buffer ``name``'s heat map index: "position" (of batch element
    0), "vocab" (a token id) or None (channels, units, batch elements)."""
    if ndim >= 4:
        return "position", "position"
    if ndim == 3:
        return "position", "vocab" if name.endswith(("logits", "probs")) else None
    return None, None


def _describe_axes(name: str, ndim: int) -> tuple:
    """(row label, column label) of the heat map of buffer ``name``."""
    if ndim >= 4:
        return "query position (batch 0, head 0)", "key position"
    if ndim == 3:
        col = "channel"
        if name.endswith("qkv"):
            col = "channel (q | k | v)"
        elif name.endswith(("logits", "probs")):
            col = "token id"
        elif ".mlp." in name:
            col = "hidden unit"
        return "position (batch 0)", col
    if ndim == 2:
        return "batch element", "position"
    return "", "index"


class StepThrough:
    """A walk over a model's forward pass, buffer by buffer, and then its backward pass.

    ``steps`` is a list of (phase, name, array) with phase "forward" or "backward"; ``position`` is
    the index of the current step (0 to len(steps) - 1). ``next()`` / ``prev()`` move by one and stop
    at the ends; ``go(i)`` jumps. ``current()`` describes the current step.
    """

    def __init__(self, steps: Sequence[tuple], loss: Optional[float] = None, idx=None, targets=None,
                 tokenizer=None):
        steps = [(str(ph), str(name), np.asarray(arr)) for ph, name, arr in steps]
        if not steps:
            raise ValueError("a step-through needs at least one step")
        bad = [ph for ph, _, _ in steps if ph not in PHASES]
        if bad:
            raise ValueError(f"phase must be 'forward' or 'backward', got {bad[0]!r}")
        self.steps = steps
        self.position = 0
        self.loss = loss
        self.idx = idx
        self.targets = targets
        self.tokenizer = tokenizer
        self._phase_index = []  # (k within phase, 1-based; phase length) for each step
        totals = {ph: sum(1 for p, _, _ in steps if p == ph) for ph in PHASES}
        seen = dict.fromkeys(PHASES, 0)
        for ph, _, _ in steps:
            seen[ph] += 1
            self._phase_index.append((seen[ph], totals[ph]))

    @classmethod
    def from_model(cls, model, idx, targets, tokenizer=None, train=False) -> "StepThrough":
        """Run ``model.forward(idx, targets)`` and ``model.backward(acts, trace=...)`` and collect
        every stored activation (forward order) and every traced gradient (backward order)."""
        _, loss, acts = model.forward(idx, targets, train=train)
        trace = []
        model.backward(acts, trace=trace)
        steps = [("forward", name, acts[name]) for name in acts.order]
        steps += [("backward", name, grad) for name, grad in trace]
        return cls(steps, loss=loss, idx=acts.idx, targets=acts.targets, tokenizer=tokenizer)

    # -------------------------------------------------------------------------------- moving
    def __len__(self) -> int:
        return len(self.steps)

    def go(self, position: int) -> dict:
        """Jump to ``position`` (clipped to the valid range); returns :meth:`current`."""
        self.position = int(min(max(int(position), 0), len(self.steps) - 1))
        return self.current()

    def next(self) -> dict:
        return self.go(self.position + 1)

    def prev(self) -> dict:
        return self.go(self.position - 1)

    @property
    def at_start(self) -> bool:
        return self.position == 0

    @property
    def at_end(self) -> bool:
        return self.position == len(self.steps) - 1

    # -------------------------------------------------------------------------------- describing
    def names(self, phase: Optional[str] = None) -> list:
        return [name for ph, name, _ in self.steps if phase is None or ph == phase]

    def step(self, position: Optional[int] = None) -> tuple:
        return self.steps[self.position if position is None else position]

    def describe(self, position: int) -> dict:
        """position, phase, name, shape, dtype, stats (mean, std, min, max), index_in_phase (1-based),
        phase_length, label (``"forward 4/32: h.0.ln_1.out (2, 8, 16)"``), the same label without its
        phase word (``in_phase``: ``"4/32: h.0.ln_1.out (2, 8, 16)"``, for a view that shows the phase
        on its own) and note of step ``position``."""
        phase, name, arr = self.steps[position]
        k, n = self._phase_index[position]
        shape = tuple(int(d) for d in arr.shape)
        in_phase = f"{k}/{n}: {name} {shape}"
        return dict(position=position, phase=phase, name=name, shape=shape, dtype=str(arr.dtype),
                    stats=array_stats(arr), index_in_phase=k, phase_length=n,
                    label=f"{phase} {in_phase}", in_phase=in_phase, note=buffer_note(phase, name))

    def current(self) -> dict:
        return self.describe(self.position)

    def label(self, position: Optional[int] = None) -> str:
        return self.describe(self.position if position is None else position)["label"]

    def stats_text(self, position: Optional[int] = None) -> str:
        s = {k: _clean(v) for k, v in self.describe(self.position if position is None else position)["stats"].items()}
        return f"mean {s['mean']:+.4f}   std {s['std']:.4f}   min {s['min']:+.4f}   max {s['max']:+.4f}"

    def heatmap_array(self, step=None) -> np.ndarray:
        """The 2-D array shown for ``step``: an index, a (phase, name, array) tuple, an array, or
        None for the current step. See :func:`heatmap_array`."""
        if step is None:
            step = self.position
        if isinstance(step, (int, np.integer)):
            step = self.steps[int(step)]
        if isinstance(step, tuple):
            step = step[2]
        return heatmap_array(step)

    def labels(self) -> list:
        return [self.label(i) for i in range(len(self.steps))]

    def position_labels(self) -> Optional[list]:
        """The text of each token of batch element 0 (what a heat map's position axis shows), or None
        without a tokenizer or inputs."""
        if self.tokenizer is None or self.idx is None:
            return None
        return token_labels(self.tokenizer, np.asarray(self.idx)[0])

    def vocab_labels(self) -> Optional[list]:
        """The text of every token id 0 .. V-1 (the columns of the logits and probs), or None."""
        if self.tokenizer is None:
            return None
        return token_labels(self.tokenizer, np.arange(self.tokenizer.vocab_size))

    def plot_heatmap(self, ax, step=None, **kwargs):
        """:func:`plot_heatmap` of ``step`` (an index or None for the current step), its position and
        vocabulary axes labelled with the tokens' text."""
        step = self.steps[self.position if step is None else int(step)]
        return plot_heatmap(ax, step, positions=self.position_labels(), vocab=self.vocab_labels(), **kwargs)

    def heatmap_png(self, step=None, figsize=(5.5, 3.4), dpi=90) -> bytes:
        """:func:`heatmap_png` of ``step`` (an index or None for the current step), with the tokens'
        text on its position and vocabulary axes."""
        step = self.steps[self.position if step is None else int(step)]
        return heatmap_png(step, figsize, dpi, positions=self.position_labels(), vocab=self.vocab_labels())


# ------------------------------------------------------------------------------------ pictures
def _tick_text(label: str) -> str:
    return label.replace("$", r"\$")  # a lone '$' must not start matplotlib's mathtext


def plot_heatmap(ax, step: tuple, cmap=None, colorbar=True, positions=None, vocab=None):
    """Heat map of a (phase, name, array) step on ``ax``: activations in a sequential colour map,
    gradients in a diverging one centred on zero (so the sign of each entry can be read).

    ``positions``: the text of batch element 0's tokens (see :meth:`StepThrough.position_labels`);
    ``vocab``: the text of every token id. When given, an axis that indexes positions (attention's
    query and key axes, the rows of a (B, T, C) tensor) or token ids (the columns of the logits and
    probs) is ticked with that text instead of numbers."""
    from ..plots import plot_heatmap_2d

    phase, name, arr = step
    rows, cols = _describe_axes(name, np.ndim(arr))
    title = f"d loss / d {name}" if phase == "backward" else name
    a2 = heatmap_array(arr)
    im = plot_heatmap_2d(ax, a2, f"{title}  {tuple(np.shape(arr))}", rows, cols,
                         signed=phase == "backward", cmap=cmap, colorbar=colorbar)
    text = {"position": positions, "vocab": vocab, None: None}
    row_kind, col_kind = _axis_kinds(name, np.ndim(arr))
    rows_text, cols_text = text[row_kind], text[col_kind]
    if rows_text is not None and len(rows_text) == a2.shape[0]:
        ax.set_yticks(range(a2.shape[0]))
        ax.set_yticklabels([_tick_text(t) for t in rows_text], fontsize=8)
    if cols_text is not None and len(cols_text) == a2.shape[1]:
        ax.set_xticks(range(a2.shape[1]))
        ax.set_xticklabels([_tick_text(t) for t in cols_text], fontsize=8 if a2.shape[1] <= 16 else 6)
        if col_kind == "vocab":
            ax.set_xlabel("next token", fontsize=8)
    return im


def heatmap_png(step: tuple, figsize=(5.5, 3.4), dpi=90, positions=None, vocab=None) -> bytes:
    """PNG bytes of :func:`plot_heatmap` (matplotlib's Agg canvas, no pyplot)."""
    from ..plots import figure_png

    return figure_png(lambda ax: plot_heatmap(ax, step, positions=positions, vocab=vocab), figsize, dpi,
                      margins=(0.12, 0.86, 0.14, 0.9))


# ------------------------------------------------------------------------------------ the demo
DEMO_TEXT_KEY = "while"  # pydoc topic whose text the demo reads


def tiny_demo(train_steps: int = 0, seed: int = 0, text: Optional[str] = None, batch_size: int = 2,
              seq_len: int = 8):
    """A step-through of a tiny model (2 layers, 2 heads, d_model 16, d_ff 32, context ``seq_len``,
    float64) on a real text snippet (Python's help text on the ``while`` statement by default).

    Returns (StepThrough, model, tokenizer, text). The batch is the first ``batch_size`` windows of
    the snippet. With ``train_steps > 0`` the model first trains on the snippet (AdamW, lr 1e-2) so
    the pictures show a model that has learned something rather than its initialisation.
    """
    from ..config import ModelConfig, TrainConfig
    from ..data import eval_windows
    from ..model import Model
    from ..tokenizer import CharTokenizer

    if text is None:
        from ..data import builtin_topics
        text = builtin_topics()[DEMO_TEXT_KEY]
    tok = CharTokenizer.fit(text)
    ids = tok.encode(text)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=2, n_heads=2, d_ff=32,
                      max_seq_len=seq_len, dtype="float64")
    model = Model(cfg, seed=seed)
    if train_steps > 0:
        from ..train import Trainer
        tcfg = TrainConfig(batch_size=16, seq_len=seq_len, steps=train_steps, lr=1e-2, min_lr=1e-3,
                           warmup_steps=0, lr_decay_steps=train_steps, eval_interval=train_steps,
                           checkpoint_interval=train_steps, seed=seed)
        Trainer(model, ids, None, tcfg, progress=False).train()
    x, y = eval_windows(ids, seq_len)
    st = StepThrough.from_model(model, x[:batch_size], y[:batch_size], tokenizer=tok)
    return st, model, tok, text
