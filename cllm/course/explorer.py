"""The logic behind the hyperparameter explorer (``cllm.course.widgets.Explorer``), without any widget.

    data = prepare_data()                          # a char-level slice of the built-in corpus, once
    settings = ExplorerSettings(lr=3e-3, steps=60)
    model_cfg, train_cfg = settings_to_configs(settings, data.vocab_size)   # ValueError if invalid
    lattice = settings.replace(embedding="lattice")  # the prime embedding needs each token's code:
    model_cfg, _ = settings_to_configs(lattice, data.vocab_size, data.lattice_codes)  # tokenizer_codes(...)
    result = run_training(settings, data)          # synchronous; deterministic given the seed
    result.final_val_loss, result.sample, result.history

Every value the explorer's controls can take is a field of :class:`ExplorerSettings`; the widget only
reads its controls into one, and calls :func:`run_training` in a background thread. The same settings
give the same model, the same batches and so the same losses, whether the run is started by the
button or by a direct call.

Nothing here imports matplotlib at module import; the render functions import it when called and
draw on a bare ``matplotlib.figure.Figure`` (no pyplot), which is safe from a background thread.
"""
from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, fields
from functools import cached_property, lru_cache
from typing import Callable, Optional, Sequence

import numpy as np

from .._validate import check_int, check_int_array, is_int
from ..config import EMBEDDINGS, INITS, OPTIMIZERS, ModelConfig, TrainConfig
from ..plots import figure_png, plot_live, plot_runs, smooth  # noqa: F401  (the explorer's pictures)

#: the choices of the "init" control: how the weight matrices start (``ModelConfig.init``)
EXPLORER_INITS = tuple(INITS)
#: the choices of the "embedding" control: a learned table, or the prime (lattice) embedding
#: E = F W + R of :mod:`cllm.lattice.model`, F built from the codes of ``tokenizer_codes``
EXPLORER_EMBEDDINGS = tuple(EMBEDDINGS)
EXPLORER_OPTIMIZERS = tuple(OPTIMIZERS)


@dataclass(frozen=True)
class ExplorerSettings:
    """Every value the explorer's controls can set. The defaults train in a few seconds."""

    lr: float = 3e-3
    n_layers: int = 2
    n_heads: int = 2
    d_model: int = 32
    seq_len: int = 32
    batch_size: int = 8
    steps: int = 150
    optimizer: str = "adamw"
    init: str = "gpt2"
    embedding: str = "learned"
    grad_clip: float = 1.0  # 0: no clipping
    seed: int = 0
    # not shown as controls; part of the run all the same
    eval_points: int = 6  # validation evaluations during the run (plus one at the end)
    eval_max_batches: int = 4  # validation batches (of 4 * batch_size windows) per evaluation
    sample_tokens: int = 160
    prompt: str = "The "
    temperature: float = 0.8
    dtype: str = "float32"  # "float64" for runs whose printed losses must agree across machines

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "ExplorerSettings":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        return ExplorerSettings(**{**asdict(self), **changes})

    def label(self) -> str:
        """A short description for legends and tables."""
        clip = f"clip {self.grad_clip:g}" if self.grad_clip > 0 else "no clip"
        emb = " lattice-emb" if self.embedding == "lattice" else ""
        return (f"lr {self.lr:.1e} {self.optimizer} {self.init}{emb} L{self.n_layers} H{self.n_heads} "
                f"C{self.d_model} T{self.seq_len} B{self.batch_size} {clip} seed {self.seed}")


def settings_to_configs(settings: ExplorerSettings, vocab_size: int, lattice_codes=None):
    """-> (ModelConfig, TrainConfig) for ``settings``; ValueError with a one-line reason if invalid.

    ``lattice_codes`` (one integer >= 2 per token) is needed with ``embedding="lattice"`` only and
    ignored otherwise; the explorer passes ``data.lattice_codes``, i.e.
    ``cllm.lattice.model.tokenizer_codes(tokenizer, train_ids)`` (primes by training frequency).

    Choices made here: d_ff = 4 d_model, max_seq_len = seq_len, ``settings.dtype``; AdamW with a short warmup
    (a tenth of the steps, at most 20) then cosine decay to lr/10 at the last step; SGD and momentum
    at a constant rate; validation ``eval_points`` times during the run and at the end.
    """
    s = settings
    if not isinstance(s, ExplorerSettings):
        raise ValueError(f"settings must be an ExplorerSettings, got {type(s).__name__}")
    vocab_size = check_int("vocab_size", vocab_size, lo=1)
    for name in ("n_layers", "n_heads", "d_model", "seq_len", "batch_size", "steps", "eval_points",
                 "eval_max_batches"):
        v = getattr(s, name)
        if not is_int(v) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if s.d_model % s.n_heads:
        fits = ", ".join(str(h) for h in range(1, min(s.d_model, 16) + 1) if s.d_model % h == 0)
        raise ValueError(f"d_model ({s.d_model}) must be divisible by the number of heads ({s.n_heads}); "
                         f"with d_model {s.d_model} use {fits} heads")
    if not (isinstance(s.lr, (int, float)) and math.isfinite(s.lr) and s.lr > 0):
        raise ValueError(f"learning rate must be a positive number, got {s.lr!r}")
    if s.optimizer not in EXPLORER_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(EXPLORER_OPTIMIZERS)}, got {s.optimizer!r}")
    if s.init not in EXPLORER_INITS:
        hint = " (the prime embedding is a setting of its own: embedding='lattice')" if s.init == "lattice" else ""
        raise ValueError(f"init must be one of {', '.join(EXPLORER_INITS)}, got {s.init!r}{hint}")
    if s.embedding not in EXPLORER_EMBEDDINGS:
        raise ValueError(f"embedding must be one of {', '.join(EXPLORER_EMBEDDINGS)}, got {s.embedding!r}")
    lattice = s.embedding == "lattice"
    if lattice:
        if lattice_codes is None:
            raise ValueError("embedding 'lattice' needs the tokens' lattice codes: pass "
                             "lattice_codes=tokenizer_codes(tokenizer, train_ids) (or data.lattice_codes)")
        codes = check_int_array("lattice_codes", lattice_codes, lo=2)
        if codes.shape != (vocab_size,):
            raise ValueError(f"lattice_codes must hold one code per token ({vocab_size}), got shape {codes.shape}")
    if not (isinstance(s.grad_clip, (int, float)) and math.isfinite(s.grad_clip) and s.grad_clip >= 0):
        raise ValueError(f"gradient clipping must be >= 0 (0 switches it off), got {s.grad_clip!r}")
    if not is_int(s.seed) or s.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {s.seed!r}")
    if not is_int(s.sample_tokens) or s.sample_tokens < 0:
        raise ValueError(f"sample_tokens must be a non-negative integer, got {s.sample_tokens!r}")
    if s.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {s.dtype!r}")
    model_cfg = ModelConfig(vocab_size=int(vocab_size), d_model=int(s.d_model), n_layers=int(s.n_layers),
                            n_heads=int(s.n_heads), d_ff=4 * int(s.d_model), max_seq_len=int(s.seq_len),
                            dtype=s.dtype, init=s.init, embedding=s.embedding,
                            lattice_codes=tuple(int(c) for c in codes) if lattice else None)
    steps = int(s.steps)
    adamw = s.optimizer == "adamw"
    warmup = min(20, steps // 10) if adamw else 0
    train_cfg = TrainConfig(batch_size=int(s.batch_size), seq_len=int(s.seq_len), steps=steps,
                            optimizer=s.optimizer, lr=float(s.lr), min_lr=float(s.lr) / 10 if adamw else float(s.lr),
                            warmup_steps=warmup, lr_decay_steps=steps, grad_clip=float(s.grad_clip),
                            eval_interval=max(1, steps // int(s.eval_points)),
                            eval_max_batches=int(s.eval_max_batches), log_interval=10,
                            checkpoint_interval=steps, seed=int(s.seed))
    return model_cfg, train_cfg


# ---------------------------------------------------------------------------------------- data
@dataclass
class ExplorerData:
    """A tokenizer and the two token splits the explorer trains and validates on."""

    tokenizer: object
    train: np.ndarray
    val: np.ndarray
    n_chars: int

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @cached_property
    def lattice_codes(self) -> tuple:
        """Each token's lattice code, for ``embedding="lattice"``:
        ``cllm.lattice.model.tokenizer_codes(tokenizer, train)`` (characters: the most frequent one in
        the training split gets 2, the next 3, then 5, ...). Computed once, on first use."""
        from ..lattice.model import tokenizer_codes

        return tokenizer_codes(self.tokenizer, self.train)


@lru_cache(maxsize=4)
def prepare_data(n_chars: int = 200_000, val_frac: float = 0.1) -> ExplorerData:
    """The first ``n_chars`` characters of the built-in corpus, a character tokenizer fitted on them,
    and a split into the first 90% (training) and the last 10% (validation). Cached: prepared once."""
    from ..data import builtin_corpus, split
    from ..tokenizer import CharTokenizer

    text = builtin_corpus()[:n_chars]
    tok = CharTokenizer.fit(text)
    ids = tok.encode(text)
    train, val = split(ids, val_frac)
    train.flags.writeable = False  # shared between runs and threads: nobody may change it
    val.flags.writeable = False
    return ExplorerData(tok, train, val, len(text))


# ---------------------------------------------------------------------------------------- a run
@dataclass
class RunResult:
    """What one run produced. ``stopped`` is true when it was ended early by a stop request."""

    settings: ExplorerSettings
    history: object  # cllm.train.History
    final_train_loss: float
    final_val_loss: float
    sample: str
    model: object  # cllm.Model, trained
    steps_done: int
    stopped: bool
    seconds: float = 0.0
    label: str = ""

    def summary(self) -> dict:
        return dict(label=self.label, steps=self.steps_done, stopped=self.stopped,
                    train=round(self.final_train_loss, 4), val=round(self.final_val_loss, 4))


def final_train_loss(history, last: int = 10) -> float:
    """Mean training loss over the last ``last`` steps (one batch's loss alone is noisy)."""
    losses = history.train_loss[-last:]
    return float(np.mean(losses)) if losses else float("nan")


def run_training(settings: ExplorerSettings, data: Optional[ExplorerData] = None,
                 callbacks: Sequence[Callable] = (), stop_event: Optional[threading.Event] = None,
                 progress=False, lattice_codes=None) -> RunResult:
    """Train a model with ``settings`` on ``data`` (default: :func:`prepare_data`) and return the run.

    Deterministic given ``settings.seed``: the initial weights, the batches and the sample all derive
    from it. ``callbacks`` are Trainer callbacks ``cb(trainer, event, info)`` (events "step", "eval",
    "end"). Setting ``stop_event`` (a ``threading.Event``) ends the run cleanly after the current step;
    the model trained so far is kept, evaluated and sampled, and the result says ``stopped=True``.
    With ``settings.embedding == "lattice"`` the tokens' codes are ``lattice_codes`` if given, else
    ``data.lattice_codes`` (from :func:`cllm.lattice.model.tokenizer_codes`).
    Invalid settings raise ValueError before anything is trained.
    """
    import time

    from ..generate import generate
    from ..model import Model
    from ..train import Trainer

    data = prepare_data() if data is None else data
    codes = None
    if getattr(settings, "embedding", None) == "lattice":
        codes = data.lattice_codes if lattice_codes is None else lattice_codes
    model_cfg, train_cfg = settings_to_configs(settings, data.vocab_size, codes)
    t0 = time.perf_counter()
    model = Model(model_cfg, seed=int(settings.seed))

    def watch_stop(trainer, event, info):  # last, so it sees a stop set by the callbacks before it
        if stop_event is not None and stop_event.is_set():
            trainer.stop_requested = True

    trainer = Trainer(model, data.train, data.val, train_cfg, tokenizer=data.tokenizer,
                      callbacks=[*callbacks, watch_stop], progress=progress)
    history = trainer.train()  # a stop request ends it after the step in progress (at least one)
    stopped = trainer.step < train_cfg.steps
    sample = ""
    if settings.sample_tokens > 0:
        prompt = settings.prompt or data.tokenizer.decode(data.val[:1])
        try:
            prompt_ids = data.tokenizer.encode(prompt)
        except ValueError:  # a character outside the vocabulary: start from the validation text
            prompt_ids = np.asarray(data.val[:4])
        ids = generate(model, prompt_ids[-model_cfg.max_seq_len:], settings.sample_tokens,
                       temperature=settings.temperature, seed=int(settings.seed))
        sample = data.tokenizer.decode(ids[0])
    return RunResult(settings=settings, history=history, final_train_loss=final_train_loss(history),
                     final_val_loss=float(history.val_loss[-1]), sample=sample, model=model,
                     steps_done=trainer.step, stopped=stopped, seconds=time.perf_counter() - t0,
                     label=settings.label())


def results_table(runs: Sequence[RunResult]) -> list:
    """Rows (run number, label, steps, stopped, final train loss, final validation loss)."""
    return [(k, r.label, r.steps_done, r.stopped, round(r.final_train_loss, 4), round(r.final_val_loss, 4))
            for k, r in enumerate(runs, 1)]


def results_text(runs: Sequence[RunResult]) -> str:
    """The table of :func:`results_table` as aligned plain text."""
    lines = [f"{'run':>3}  {'steps':>5}  {'train':>7}  {'val':>7}  settings"]
    for k, label, steps, stopped, tr, va in results_table(runs):
        lines.append(f"{k:>3}  {steps:>5}{'*' if stopped else ' '} {tr:>7.4f}  {va:>7.4f}  {label}")
    if any(r.stopped for r in runs):
        lines.append("* stopped early")
    return "\n".join(lines)
