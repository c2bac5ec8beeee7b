"""Optimizers (SGD, SGD with momentum, AdamW), gradient clipping, the learning-rate schedule and
helpers for gradient accumulation.

An optimizer holds the model's parameter dict and updates its arrays IN PLACE: after
``opt.step(grads)`` every ``params[name]`` is the same ndarray object as before, with new values, so
the model, the optimizer and a notebook's references all keep seeing one set of weights.

Speed: a step touches every parameter several times. Written as whole-array numpy expressions
(``m = b1 * m + (1 - b1) * g``) each operator allocates and streams a temporary the size of the tensor
through main memory. Here each tensor is processed in chunks of ``chunk_size`` elements that stay in
the CPU cache, and every operation writes into the chunk itself or into one preallocated scratch
buffer (``out=``), so a step allocates nothing. ``adamw_reference`` keeps the plain textbook version;
the tests check that both agree to rounding, and that every chunk size and thread count gives the
same bits. ``python -m cllm.lab.bench_optim`` times them; the chunked step is bound by the arithmetic
(11 passes over cached chunks, see ``AdamW``) rather than by memory. ``threads=N`` deals the chunks
to N worker threads, which helps only where idle cores are available.

Optimizer state round-trips through ``state_dict()`` / ``load_state_dict()`` as a flat
``dict[str, np.ndarray]`` (``"step"``, ``"m_sum/<param>"``, ``"v_sum/<param>"``, ``"momentum/<param>"``) that
``np.savez`` stores without pickle.
"""
from __future__ import annotations

import contextvars
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping, Optional

import numpy as np

from ._validate import check_int, check_number as _check_number

# Elements per chunk: 64K float32 = 256 KiB per operand, so the chunks of p, g, m, v and the scratch
# buffer (1.25 MiB) stay in L2/L3 cache. Chunks from 32K to 256K perform within ~10% of each other;
# 4K chunks are slower than the plain version (Python overhead per ufunc call), 1M chunks spill the
# cache (python -m cllm.lab.bench_optim --chunks).
DEFAULT_CHUNK = 1 << 16


def default_decay(name: str, array: np.ndarray) -> bool:
    """Which parameters get weight decay: matrices, except the token/position embeddings.

    LayerNorm weights and biases, linear biases, embeddings (``wte``, ``wpe``) and per-head scalars
    such as ``lattice_beta`` are left alone (the GPT-2 / nanoGPT convention keys on ``ndim >= 2``; the
    embeddings are excluded here as well because decaying a lookup table pulls rare tokens to zero).
    """
    return array.ndim == 2 and name not in ("wte", "wpe")


def _chunks(n: int, size: int):
    """Slices that cover range(n) in pieces of at most ``size``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class Optimizer:
    """Base class: parameter bookkeeping, gradient checks, chunked (optionally threaded) updates,
    state (de)serialisation.

    Subclasses name their per-parameter state in ``_state_names`` and update one chunk in
    ``_update_chunk``. The work of a step is a fixed list of (parameter, slice) chunks; with
    ``threads > 1`` the chunks are dealt round-robin to worker threads, each with its own scratch
    buffer (numpy releases the GIL inside ufuncs). Every element is updated by the same sequence of
    operations whatever the chunk size or thread count, so results are bitwise identical.
    """

    _state_names: tuple = ()

    def __init__(self, params: Mapping[str, np.ndarray], lr: float, weight_decay: float = 0.0,
                 decay: Optional[Callable[[str, np.ndarray], bool]] = None, chunk_size: int = DEFAULT_CHUNK,
                 threads: Optional[int] = 1):
        if not isinstance(params, Mapping) or not params:
            raise ValueError("params must be a non-empty dict of name -> np.ndarray")
        for name, p in params.items():
            if not isinstance(p, np.ndarray) or not np.issubdtype(p.dtype, np.floating):
                raise ValueError(f"parameter {name!r} must be a floating-point np.ndarray")
            if not p.flags.c_contiguous or not p.flags.writeable:
                raise ValueError(f"parameter {name!r} must be a writeable C-contiguous array (updated in place)")
        self.params = params
        self.lr = _check_number("lr", lr, 0.0, lo_open=True)
        self.weight_decay = _check_number("weight_decay", weight_decay, 0.0)
        self.chunk_size = check_int("chunk_size", chunk_size, 1)
        self.threads = _resolve_threads(threads, sum(p.size for p in params.values()))
        rule = default_decay if decay is None else decay
        self.decayed = {name: bool(rule(name, p)) for name, p in params.items()}
        self.t = 0  # number of steps taken
        # per-parameter state, flat (1-D) so chunks are plain slices; zeros as in torch
        self.state = {prefix: {name: np.zeros(p.size, dtype=p.dtype) for name, p in params.items()}
                      for prefix in self._state_names}
        # the work of one step: every chunk of every tensor, in parameter order
        self._work = [(name, s) for name, p in params.items() for s in _chunks(p.size, chunk_size)]
        # per worker thread: one scratch buffer per dtype, as long as a chunk (or the largest tensor)
        sizes = {}
        for p in params.values():
            sizes[p.dtype] = max(sizes.get(p.dtype, 0), min(chunk_size, p.size))
        self._scratch = [{dt: np.empty(n, dtype=dt) for dt, n in sizes.items()} for _ in range(self.threads)]
        self._pool = None  # ThreadPoolExecutor, created on the first threaded step
        self._fused_step = None  # fn(opt, flat_p, flat_g): a fused kernel does the whole update instead

    # -- checks -----------------------------------------------------------------------------------
    def _check_grads(self, grads: Mapping[str, np.ndarray]) -> None:
        missing = [k for k in self.params if k not in grads]
        if missing:
            raise ValueError(f"grads has no entry for parameter {missing[0]!r}")
        extra = [k for k in grads if k not in self.params]
        if extra:
            raise ValueError(f"grads has an entry {extra[0]!r} that is not a parameter")
        for name, p in self.params.items():
            g = grads[name]
            if not isinstance(g, np.ndarray) or g.shape != p.shape or not np.issubdtype(g.dtype, np.floating):
                got = getattr(g, "shape", type(g).__name__)
                raise ValueError(f"gradient of {name!r} has shape {got}, expected {p.shape} (floating point)")
            if not p.flags.c_contiguous:
                raise ValueError(f"parameter {name!r} is no longer C-contiguous; cannot update it in place")

    # -- the update -------------------------------------------------------------------------------
    def step(self, grads: Mapping[str, np.ndarray], lr: Optional[float] = None) -> None:
        """One update of every parameter, in place. ``lr`` overrides the stored rate for this step."""
        lr = self.lr if lr is None else _check_number("lr", lr, 0.0)
        self._check_grads(grads)
        self.t += 1
        self._begin_step(lr)
        flat_p = {name: p.reshape(-1) for name, p in self.params.items()}     # views: (numel,)
        flat_g = {name: grads[name].reshape(-1) for name in self.params}      # (numel,)
        if self._fused_step is not None:  # one pass per tensor, threaded inside the kernel
            self._fused_step(self, flat_p, flat_g)
            return
        n = self.threads
        if n == 1:
            self._run(self._work, flat_p, flat_g, self._scratch[0], lr)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(n, thread_name_prefix="cllm-optim")
        # each job runs in a copy of the caller's context, so the caller's np.errstate holds there too
        jobs = [self._pool.submit(contextvars.copy_context().run, self._run, self._work[i::n], flat_p, flat_g,
                                  self._scratch[i], lr) for i in range(n)]
        for job in jobs:
            job.result()  # re-raises a worker's exception

    def _run(self, work, flat_p, flat_g, scratch, lr) -> None:
        for name, s in work:
            p = flat_p[name][s]
            self._update_chunk(name, s, p, flat_g[name][s], scratch[p.dtype][: p.size], lr)

    def _begin_step(self, lr: float) -> None:
        """Per-step scalars shared by all chunks (called after ``t`` is incremented)."""

    def _update_chunk(self, name, s, p, g, a, lr):  # pragma: no cover - abstract
        """Update the chunk ``p`` (a view of ``params[name]`` at slice ``s``) from ``g``; ``a`` is scratch."""
        raise NotImplementedError

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Flat dict for np.savez: ``"step"`` (0-d int64) and ``"<prefix>/<param>"`` (param-shaped)."""
        out = {"step": np.array(self.t, dtype=np.int64)}
        for prefix, tensors in self.state.items():
            for name, buf in tensors.items():
                out[f"{prefix}/{name}"] = buf.reshape(self.params[name].shape)  # view, no copy
        return out

    def load_state_dict(self, d: Mapping[str, np.ndarray]) -> None:
        """Copy a ``state_dict()`` into this optimizer (in place). Everything is validated before
        anything is copied; a mismatch raises ValueError naming the tensor."""
        expected = self.state_dict()
        for key in expected:
            if key not in d:
                raise ValueError(f"optimizer state: missing tensor {key!r}")
        for key in d:
            if key not in expected:
                raise ValueError(f"optimizer state: unexpected tensor {key!r}")
        step = np.asarray(d["step"])
        if step.shape != () or not np.issubdtype(step.dtype, np.integer) or int(step) < 0:
            raise ValueError(f"optimizer state: 'step' must be a non-negative integer scalar, got {d['step']!r}")
        for key, ref in expected.items():
            if key == "step":
                continue
            arr = np.asarray(d[key])
            if arr.shape != ref.shape:
                raise ValueError(f"optimizer state: tensor {key!r} has shape {arr.shape}, expected {ref.shape}")
            if arr.dtype != ref.dtype:
                raise ValueError(f"optimizer state: tensor {key!r} has dtype {arr.dtype}, expected {ref.dtype}")
        for key, ref in expected.items():
            if key != "step":
                np.copyto(ref, d[key])  # ref is a view of the flat state buffer
        self.t = int(step)


def _resolve_threads(threads, numel: int) -> int:
    """``None`` -> 1 below 1M parameters (threads would cost more than they save), else up to 4."""
    if threads is None:
        return 1 if numel < (1 << 20) else max(1, min(4, os.cpu_count() or 1))
    return check_int("threads", threads, 1)


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum (torch.optim.SGD's convention).

    Per parameter, with g its gradient::

        d = g + weight_decay * p        # L2 weight decay (coupled), only where decay(name, p)
        buf = momentum * buf + d        # only when momentum > 0 ("SGD with momentum")
        p -= lr * (buf if momentum > 0 else d)
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 decay: Optional[Callable] = None, chunk_size: int = DEFAULT_CHUNK, threads: Optional[int] = 1):
        self.momentum = _check_number("momentum", momentum, 0.0, 1.0, hi_open=True)
        self._state_names = ("momentum",) if self.momentum > 0 else ()
        super().__init__(params, lr, weight_decay, decay, chunk_size, threads)

    def _update_chunk(self, name, s, p, g, a, lr):
        wd = self.weight_decay if self.decayed[name] else 0.0
        d = g
        if wd:
            np.multiply(p, wd, out=a)        # a = wd * p
            a += g                           # d = g + wd * p
            d = a
        if self.momentum > 0:
            buf = self.state["momentum"][name][s]
            buf *= self.momentum             # buf = mu * buf
            buf += d                         #       + d
            d = buf
        np.multiply(d, lr, out=a)            # a = lr * d
        p -= a                               # p -= lr * d


class AdamW(Optimizer):
    """Adam with decoupled weight decay; the same update as torch.optim.AdamW, to rounding.

    Per parameter, at step t = 1, 2, ..., in the textbook form (``adamw_reference``)::

        p *= 1 - lr * weight_decay                    # only where decay(name, p): matrices by default
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        step_size = lr / (1 - beta1 ** t)
        denom = sqrt(v) / sqrt(1 - beta2 ** t) + eps
        p -= step_size * (m / denom)

    Speed, a named step: the state kept is the plain exponential sums ``m_sum = beta1 * m_sum + g``
    and ``v_sum = beta2 * v_sum + g * g``, so that m = (1 - beta1) m_sum and v = (1 - beta2) v_sum. Every
    constant then moves out of the per-element work into two per-step scalars::

        p -= k * m_sum / (sqrt(v_sum) + e)     k = step_size (1 - beta1) / c,  e = eps / c,
                                               c = sqrt((1 - beta2) / (1 - beta2 ** t))

    which is 11 passes over each chunk instead of the textbook form's 14; on the seed configuration's
    19.6M parameters (untied head) an update is about 15% faster (one thread 31.2 -> 26.2 ms, two
    threads 28.7 -> 24.4 ms, medians of 20 steps taken in turns). The result equals the textbook update up to
    float rounding (tested against ``adamw_reference`` and torch). ``moments(name)`` gives m and v in
    the textbook form; ``state_dict()`` stores the sums (``"m_sum/<param>"``, ``"v_sum/<param>"``) so
    a resumed run continues bit for bit, and ``load_state_dict`` also accepts textbook moments
    (``"m/<param>"``, ``"v/<param>"``, as checkpoints written before this change hold them).

    ``threads``: worker threads for the update (None: automatic, see ``_resolve_threads``).
    ``kernels``: "numpy" (the chunked step above), "numba" (one fused pass per tensor, the same
    operations in the same order: :func:`cllm.kernels.fused.adamw_step`) or "auto".
    """

    _state_names = ("m_sum", "v_sum")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.1, decay: Optional[Callable] = None, chunk_size: int = DEFAULT_CHUNK,
                 threads: Optional[int] = 1, kernels: str = "numpy"):
        from .kernels import optim_kernels

        fused = optim_kernels(kernels)  # checks the choice before anything is built
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.beta1 = _check_number("beta1", betas[0], 0.0, 1.0, hi_open=True)
        self.beta2 = _check_number("beta2", betas[1], 0.0, 1.0, hi_open=True)
        self.eps = _check_number("eps", eps, 0.0, lo_open=True)
        super().__init__(params, lr, weight_decay, decay, chunk_size, threads)
        self.kernels = "numpy" if fused is None else "numba"
        self._fused_step = None if fused is None else fused.adamw_step

    def _begin_step(self, lr):
        t, b1, b2 = self.t, self.beta1, self.beta2
        self._shrink = 1.0 - lr * self.weight_decay              # decoupled decay factor
        c = math.sqrt((1.0 - b2) / (1.0 - b2 ** t))              # sqrt(v) / sqrt(1 - b2^t) = c sqrt(v_sum)
        self._k = lr * (1.0 - b1) / (1.0 - b1 ** t) / c          # step_size (1 - b1) / c
        self._e = self.eps / c                                   # eps / c

    def _update_chunk(self, name, s, p, g, a, lr):
        m, v = self.state["m_sum"][name][s], self.state["v_sum"][name][s]
        if self.decayed[name] and self._shrink != 1.0:
            p *= self._shrink                # p *= 1 - lr * wd            (decoupled decay)
        m *= self.beta1                      # m_sum = b1 * m_sum
        m += g                               #         + g
        np.multiply(g, g, out=a)             # a = g * g
        v *= self.beta2                      # v_sum = b2 * v_sum
        v += a                               #         + g * g
        np.sqrt(v, out=a)                    # a = sqrt(v_sum)
        a += self._e                         # a = sqrt(v_sum) + eps / c   (= denom / c)
        np.divide(m, a, out=a)               # a = m_sum / (denom / c)
        a *= self._k                         # a = step_size * m / denom
        p -= a                               # p -= step_size * m / denom

    def moments(self, name: str):
        """(m, v) of parameter ``name`` in the textbook form (new arrays shaped like the parameter)."""
        shape = self.params[name].shape
        m = self.state["m_sum"][name] * (1.0 - self.beta1)
        v = self.state["v_sum"][name] * (1.0 - self.beta2)
        return m.reshape(shape), v.reshape(shape)

    def load_state_dict(self, d: Mapping[str, np.ndarray]) -> None:
        """As :meth:`Optimizer.load_state_dict`; textbook moments ``"m/<param>"`` and ``"v/<param>"``
        (as checkpoints written before the sums were kept hold them) are converted to sums."""
        if any(k.startswith(("m/", "v/")) for k in d):
            scale = {"m": 1.0 / (1.0 - self.beta1), "v": 1.0 / (1.0 - self.beta2)}
            converted = {}
            for key, value in d.items():
                kind, _, rest = key.partition("/")
                if kind in scale and rest:
                    value = np.asarray(value)
                    converted[f"{kind}_sum/{rest}"] = (value * scale[kind]).astype(value.dtype, copy=False)
                else:
                    converted[key] = value
            d = converted
        super().load_state_dict(d)


def adamw_reference(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, t: int, lr: float,
                    beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0) -> None:
    """The plain whole-array AdamW update of one tensor (in place on p, m, v), step number ``t`` >= 1.

    The textbook form of ``AdamW``'s update, written the obvious way: each operator allocates a
    temporary. Kept for teaching, for the tests and as the benchmark's baseline.
    """
    p *= 1.0 - lr * weight_decay
    m[...] = beta1 * m + (1.0 - beta1) * g
    v[...] = beta2 * v + (1.0 - beta2) * g * g
    step_size = lr / (1.0 - beta1 ** t)
    denom = np.sqrt(v) / math.sqrt(1.0 - beta2 ** t) + eps
    p -= step_size * (m / denom)


def clip_grad_norm(grads: Mapping[str, np.ndarray], max_norm: float) -> float:
    """Global L2 norm of all gradients; if it exceeds ``max_norm`` (> 0) scale them in place.

    Returns the norm before clipping. The scale is ``max_norm / (norm + 1e-6)`` as in
    torch.nn.utils.clip_grad_norm_. Each tensor's sum of squares is one BLAS dot product of its
    raveled array; the per-tensor sums are added in float64. ``max_norm <= 0`` only measures. A
    non-finite norm is returned without scaling anything (the caller stops on it).
    """
    total = 0.0
    for g in grads.values():
        flat = g.reshape(-1)
        total += float(np.dot(flat, flat))
    norm = math.sqrt(total)
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= scale
    return norm


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Learning rate at ``step`` (0-based): nanoGPT's linear warmup then cosine decay.

    * ``step < warmup_steps``: ``lr * (step + 1) / (warmup_steps + 1)``, a line from 0 (at step -1)
      that reaches ``lr * W / (W + 1)`` at the last warmup step;
    * ``warmup_steps <= step <= decay_steps``: cosine from ``lr`` (at ``warmup_steps``) down to ``min_lr``
      (at ``decay_steps``): ``min_lr + 0.5 * (1 + cos(pi * r)) * (lr - min_lr)``,
      ``r = (step - warmup_steps) / (decay_steps - warmup_steps)``;
    * ``step > decay_steps`` (or no room to decay, ``decay_steps <= warmup_steps``): ``min_lr``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0 or decay_steps < 0:
        raise ValueError(f"warmup_steps and decay_steps must be >= 0, got {warmup_steps}, {decay_steps}")
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step > decay_steps or decay_steps <= warmup_steps:
        return min_lr
    ratio = (step - warmup_steps) / (decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def zeros_like_grads(params: Mapping[str, np.ndarray]) -> dict:
    """A gradient accumulator: zeros with the keys, shapes and dtypes of ``params``."""
    return {name: np.zeros_like(p) for name, p in params.items()}


def accumulate(into: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], scale: float = 1.0) -> None:
    """``into[k] += scale * grads[k]`` for every key, in place, without full-size temporaries.

    For gradient accumulation over K micro-batches use ``scale = 1 / K`` so the result is the mean.
    """
    for name, acc in into.items():
        if name not in grads:
            raise ValueError(f"grads has no entry for {name!r}")
        g = grads[name]
        if g.shape != acc.shape:
            raise ValueError(f"gradient of {name!r} has shape {g.shape}, expected {acc.shape}")
        if scale == 1.0:
            np.add(acc, g, out=acc)
            continue
        if not acc.flags.c_contiguous:  # no flat view to chunk: fall back to a temporary
            acc += scale * g
            continue
        a, gf = acc.reshape(-1), g.reshape(-1)
        scratch = np.empty(min(DEFAULT_CHUNK, a.size), dtype=acc.dtype)
        for s in _chunks(a.size, DEFAULT_CHUNK):
            t = scratch[: s.stop - s.start]
            np.multiply(gf[s], scale, out=t)    # t = scale * g
            a[s] += t                           # acc += scale * g


def make_optimizer(params: Mapping[str, np.ndarray], cfg, threads: Optional[int] = 1,
                   kernels: str = "numpy") -> Optimizer:
    """Build the optimizer a ``TrainConfig`` (or its dict) names: "adamw", "sgd" or "momentum".

    AdamW takes lr, (beta1, beta2), eps and weight_decay; SGD and momentum take lr and weight_decay
    (coupled L2, see ``SGD``), momentum also ``momentum``. ``threads``: see ``Optimizer``;
    ``kernels``: see ``AdamW`` (SGD has no fused kernel and always runs on numpy).
    """
    get = cfg.get if isinstance(cfg, Mapping) else (lambda k: getattr(cfg, k))
    kind = get("optimizer")
    if kind == "adamw":
        return AdamW(params, lr=get("lr"), betas=(get("beta1"), get("beta2")), eps=get("eps"),
                     weight_decay=get("weight_decay"), threads=threads, kernels=kernels)
    if kind == "sgd":
        return SGD(params, lr=get("lr"), weight_decay=get("weight_decay"), threads=threads)
    if kind == "momentum":
        return SGD(params, lr=get("lr"), momentum=get("momentum"), weight_decay=get("weight_decay"),
                   threads=threads)
    raise ValueError(f"optimizer must be 'adamw', 'sgd' or 'momentum', got {kind!r}")
