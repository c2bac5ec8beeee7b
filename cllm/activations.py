"""The activation store: every tensor the backward pass needs, saved by the forward pass, by name.

The earlier C attempt had no such store, so its backward pass could not follow the forward pass it
was meant to differentiate. Here the forward pass writes one named buffer per saved quantity per
layer, the backward pass reads exactly those, and the store can say how much memory each one takes.

Buffer names (l is the layer index; shapes for batch B, sequence T):

====================  ================  ===================================================
name                  shape             why the backward pass needs it
====================  ================  ===================================================
h.l.ln_1.in           (B, T, C)         residual stream entering block l (LayerNorm input)
h.l.ln_1.mean/rstd    (B, T)            LayerNorm statistics
h.l.ln_1.out          (B, T, C)         input of the QKV projection (for its weight gradient)
h.l.attn.qkv          (B, T, 3C)        queries, keys, values
h.l.attn.probs        (B, H, T, T)      attention probabilities (softmax backward)
h.l.attn.y            (B, T, C)         heads merged, input of the output projection
h.l.ln_2.in           (B, T, C)         residual stream after attention
h.l.ln_2.mean/rstd    (B, T)
h.l.ln_2.out          (B, T, C)         input of the MLP's first linear layer
h.l.mlp.pre           (B, T, F)         pre-activation (activation backward)
h.l.mlp.act           (B, T, F)         activation (weight gradient of the MLP projection)
ln_f.in               (B, T, C)         residual stream leaving the last block
ln_f.mean/rstd        (B, T)
ln_f.out              (B, T, C)         final hidden state (weight gradient of the head)
logits                (B, T, V)
probs                 (B, T, V)         softmax of the logits (cross-entropy backward)
====================  ================  ===================================================

With dropout on, the masks are saved too: ``emb.drop`` (B, T, C), and per layer ``h.l.attn.drop``
(B, H, T, T), ``h.l.attn.resid_drop`` and ``h.l.mlp.resid_drop`` (B, T, C). With lattice attention
the bias basis ``lattice.attn_basis`` (B, H, T, T) is saved once for all layers.
"""
from __future__ import annotations

import numpy as np


class ActivationStore:
    """Named buffers written by ``Model.forward`` and read by ``Model.backward``.

    Attributes beyond the buffers: ``idx`` and ``targets`` (the token ids), ``loss`` (a float or None),
    ``train`` (whether dropout was active). ``order`` lists the buffer names in the order the forward
    pass wrote them, which is the order a step-through walks.
    """

    def __init__(self, idx, targets=None, train=False):
        self.buffers: dict[str, np.ndarray] = {}
        self.idx = idx
        self.targets = targets
        self.train = train
        self.loss = None

    def __setitem__(self, name, value):
        self.buffers[name] = value

    def __getitem__(self, name):
        return self.buffers[name]

    def __contains__(self, name):
        return name in self.buffers

    def get(self, name, default=None):
        return self.buffers.get(name, default)

    @property
    def order(self):
        return list(self.buffers)

    def nbytes(self) -> int:
        """Total bytes held by the float buffers (token ids not counted)."""
        return int(sum(a.nbytes for a in self.buffers.values() if a is not None))

    def rows(self):
        """(name, shape, dtype, bytes) for every buffer, in forward order."""
        return [(k, tuple(a.shape), str(a.dtype), int(a.nbytes)) for k, a in self.buffers.items()]

    def table(self, group_layers=False) -> str:
        """A plain-text table of the buffers and their sizes.

        With ``group_layers`` the per-layer buffers are shown once, for layer 0, with a ``x L`` count.
        """
        rows = self.rows()
        if group_layers:
            n_layers = len({k.split(".")[1] for k, *_ in rows if k.startswith("h.")})
            rows = [(k.replace("h.0.", "h.*."), s, d, b * n_layers if k.startswith("h.0.") else b)
                    for k, s, d, b in rows if not k.startswith("h.") or k.startswith("h.0.")]
        width = max(len(r[0]) for r in rows)
        lines = [f"{'buffer':<{width}}  {'shape':<18} {'dtype':<8} {'bytes':>12}"]
        for name, shape, dtype, nbytes in rows:
            lines.append(f"{name:<{width}}  {str(shape):<18} {dtype:<8} {nbytes:>12,}")
        total = self.nbytes()
        lines.append(f"{'total':<{width}}  {'':<18} {'':<8} {total:>12,}  ({total / 1e6:.2f} MB)")
        return "\n".join(lines)


class NullStore:
    """A store that keeps nothing: the block's forward pass run where no backward pass follows
    (generation with the KV cache, :func:`cllm.generate.forward_cached`)."""

    def __setitem__(self, name, value):
        pass


def activation_bytes(B, T, C, H, L, V, d_ff, itemsize=4, dropout=False, lattice_attention=False) -> int:
    """Closed-form size of the activation store, in bytes, from the model's sizes.

    Per layer: two LayerNorms (input, output, mean, rstd: 2 BTC + 2 BT each), qkv (3 BTC), attention
    probabilities (B H T^2), merged attention output (BTC), MLP pre-activation and activation (2 BTF):
    BT (8C + 4 + 2F) + B H T^2. After the blocks: the final LayerNorm (2 BTC + 2 BT), logits and
    probabilities (2 BTV). Dropout adds its masks (BTC for the embeddings, per layer B H T^2 + 2 BTC);
    lattice attention adds its bias basis (B H T^2) once.
    """
    N = B * T
    per_layer = N * (8 * C + 4 + 2 * d_ff) + B * H * T * T
    floats = L * per_layer + N * (2 * C + 2) + 2 * N * V
    if dropout:
        floats += N * C + L * (B * H * T * T + 2 * N * C)
    if lattice_attention:
        floats += B * H * T * T
    return floats * itemsize


# ---------------------------------------------------------------------------------------------------
# memory estimates: checked before anything big is allocated

_STATE_COPIES = {"adamw": 2, "momentum": 1, "sgd": 0}  # optimizer state, in copies of the parameters


class NotEnoughMemory(MemoryError, ValueError):
    """A model, batch or file would need more memory than the machine has available (one line)."""


def param_count(cfg) -> int:
    """Number of parameters of a ``ModelConfig``, in closed form (the sum over ``model.param_shapes``
    without building it): embeddings V C + S C (+ k C for lattice embeddings), per layer
    4 C^2 + 2 C F + 9 C + F (+ H for lattice attention), the final LayerNorm 2 C, an untied head V C."""
    V, C, F, L, H = cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.n_heads
    n = V * C + cfg.max_seq_len * C + 2 * C
    if cfg.embedding == "lattice":
        n += cfg.lattice_features * C
    n += L * (4 * C * C + 2 * C * F + 9 * C + F + (H if cfg.attention_bias == "lattice" else 0))
    if not cfg.tie_weights:
        n += V * C
    return n


def param_bytes(cfg) -> int:
    """Bytes of the parameters, plus the fixed lattice buffers the options need (the (V, V)
    regulariser Laplacian is built from a float64 similarity matrix)."""
    itemsize = 8 if cfg.dtype == "float64" else 4
    n = param_count(cfg) * itemsize
    V = cfg.vocab_size
    if cfg.embedding == "lattice":
        n += V * cfg.lattice_features * itemsize
    if cfg.lattice_reg > 0:
        n += V * V * (itemsize + 8)
    return n


def param_bytes_plain(cfg) -> int:
    """Bytes of the learned parameters alone (what gradients and optimizer state copy)."""
    return param_count(cfg) * (8 if cfg.dtype == "float64" else 4)


def _step_activation_bytes(cfg, B, T, train):
    itemsize = 8 if cfg.dtype == "float64" else 4
    stored = activation_bytes(B, T, cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.vocab_size, cfg.d_ff, itemsize,
                              dropout=train and cfg.dropout > 0, lattice_attention=cfg.attention_bias == "lattice")
    if not train:
        return stored
    # the backward pass's largest live temporaries: dlogits (B, T, V), dact and dpre (B, T, F), the
    # attention's dprobs and dscores (B, H, T, T), dqkv (B, T, 3C) and a few (B, T, C) stream gradients
    N = B * T
    temps = N * cfg.vocab_size + 2 * N * cfg.d_ff + 2 * B * cfg.n_heads * T * T + 6 * N * cfg.d_model
    return stored + temps * itemsize


def training_bytes(model_cfg, batch_size, seq_len, optimizer="adamw", workers=1, grad_accum=1,
                   eval_batch_size=None) -> int:
    """Estimated peak bytes of training ``model_cfg`` with batches (batch_size, seq_len).

    Parameters, their gradients, a copy for the update-ratio measurement, the optimizer state (2
    copies for AdamW, 1 for momentum), an accumulation buffer when ``grad_accum > 1``, one gradient
    buffer per extra data-parallel worker; plus the larger of one training step's activation store
    and backward temporaries and the evaluation batch's store (``eval_batch_size`` windows, by default
    4 x batch_size as ``Trainer.evaluate`` uses). What is not counted (the token ids, Python objects)
    is small beside these.
    """
    copies = 3 + _STATE_COPIES.get(optimizer, 2) + (1 if grad_accum > 1 else 0) + max(0, workers - 1)
    eval_b = 4 * batch_size if eval_batch_size is None else eval_batch_size
    acts = max(_step_activation_bytes(model_cfg, batch_size, seq_len, train=True),
               _step_activation_bytes(model_cfg, max(1, eval_b), seq_len, train=False))
    return param_bytes(model_cfg) + (copies - 1) * param_bytes_plain(model_cfg) + acts


def loading_bytes(model_cfg, optimizer="adamw") -> int:
    """Estimated peak bytes of ``load_checkpoint``: the parameters, and while the optimizer state is
    parsed its file's bytes and its arrays (or, for SGD, the parameter file's bytes)."""
    p = param_bytes_plain(model_cfg)
    return p + max(p, 2 * _STATE_COPIES.get(optimizer, 2) * p)


def import_bytes(model_cfg, optimizer_moments: int = 0) -> int:
    """Estimated peak bytes of building ``model_cfg``'s model from a Hugging Face file
    (:mod:`cllm.interop`): the parameters, ``optimizer_moments`` more parameter-sized buffers (AdamW's
    two for an imported run), and the largest tensor three times over in float64 (its random
    initialisation, the bytes read from the file, the cast)."""
    c = model_cfg
    largest = max(c.vocab_size, c.max_seq_len, 3 * c.d_model, c.d_ff) * c.d_model
    return param_bytes_plain(c) * (1 + optimizer_moments) + 3 * 8 * largest


def generation_bytes(model_cfg, batch_size=1) -> int:
    """Estimated bytes of generating with ``model_cfg``: a model's parameters (built in float64, one
    tensor at a time, then cast), the key/value cache (2 L B S C) and the largest prefill temporaries
    (attention scores (B, H, S, S), the MLP's (B, S, F), the logits (B, S, V))."""
    c = model_cfg
    itemsize = 8 if c.dtype == "float64" else 4
    S = c.max_seq_len
    biggest = max(c.vocab_size, S, c.d_ff, 3 * c.d_model) * c.d_model * 8  # one float64 init tensor
    cache = 2 * c.n_layers * batch_size * S * c.d_model * itemsize
    temps = batch_size * (c.n_heads * S * S + 2 * S * c.d_ff + S * c.vocab_size + 8 * S * c.d_model) * itemsize
    return param_bytes(c) + biggest + cache + temps


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_available():
    """Bytes left under this process's cgroup memory limit (v2 memory.max or v1 limit_in_bytes), with
    the reclaimable page cache (inactive_file) counted as free; None where there is no limit."""
    own = []
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers in ("", "memory") or "memory" in controllers.split(","):
                    own.append((controllers, path.lstrip("/")))
    except (OSError, ValueError):
        pass
    candidates = []
    for controllers, path in own:
        base = "/sys/fs/cgroup" if controllers == "" else "/sys/fs/cgroup/memory"
        candidates.append((base + "/" + path).rstrip("/"))
    candidates += ["/sys/fs/cgroup", "/sys/fs/cgroup/memory"]
    best = None
    for d in dict.fromkeys(candidates):
        for limit_f, used_f, inactive_key in (("memory.max", "memory.current", "inactive_file"),
                                              ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                               "total_inactive_file")):
            limit, used = _read_int(f"{d}/{limit_f}"), _read_int(f"{d}/{used_f}")
            if limit is None or used is None or limit >= 1 << 60:  # "max" or v1's huge "unlimited"
                continue
            inactive = 0
            try:
                with open(f"{d}/memory.stat") as f:
                    for line in f:
                        key, _, value = line.partition(" ")
                        if key == inactive_key:
                            inactive = int(value)
            except (OSError, ValueError):
                pass
            left = max(0, limit - used + inactive)
            best = left if best is None else min(best, left)
    return best


def available_memory():
    """Bytes of memory this process can still allocate without swapping: MemAvailable from
    /proc/meminfo (else ``os.sysconf`` free pages), and no more than what a cgroup limit leaves.
    None where neither can be read."""
    import os

    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            avail = None
    group = _cgroup_available()
    if group is not None:
        avail = group if avail is None else min(avail, group)
    return avail


def format_bytes(n) -> str:
    """1.5 * 2**30 -> '1.5 GiB' (KiB and MiB below 1 GiB, TiB and PiB above; beyond in GiB powers of ten)."""
    if n >= 1e4 * (1 << 50):
        return f"{n / (1 << 30):.2e} GiB"
    for unit, size in (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def check_memory(need, what, available=None) -> None:
    """Raise :class:`NotEnoughMemory` (one line: "<what> needs about 71.3 GiB; 22.1 GiB available")
    when ``need`` bytes exceed the memory available (``available_memory()`` unless given). Nothing is
    refused where the available memory cannot be read."""
    avail = available_memory() if available is None else available
    if avail is not None and need > avail:
        raise NotEnoughMemory(f"{what} needs about {format_bytes(need)}; {format_bytes(avail)} available")
