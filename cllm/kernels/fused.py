"""The numba path's ops: the signatures and return values of :mod:`cllm.ops`, the work done by the
fused kernels of :mod:`cllm.kernels._numba`. Importing this module imports numba.

``OPS`` names the ops replaced here; :func:`cllm.kernels.ops_for` takes every other name (the linear
layers, which are BLAS either way; dropout, whose masks must come from the same generator draws; the
position embedding) from :mod:`cllm.ops` unchanged.
"""
from __future__ import annotations

import math
import os

import numba
import numpy as np

from ..ops.attention import attention_dropout, merge_heads, split_heads
from ..ops.cross_entropy import scored_targets
from ..ops.layernorm import LN_EPS
from . import _numba as K
from ._threads import threads

if "NUMBA_THREADING_LAYER" not in os.environ:  # the user's choice wins
    numba.config.THREADING_LAYER = "threadsafe"  # omp or tbb: launches from several threads at once

# The kernels that replace their numpy op in the numba namespace: those measured faster (2-core AMD
# EPYC, seed and small shapes, median microseconds numpy/kernel): LayerNorm forward 74/28 and backward
# 241/75, attention forward 339/259, embedding scatter 833/87, cross-entropy backward 28/36 (kept: one
# pass instead of three, no copy of the one-hot). The others are here, equal to their op and tested,
# but numpy's is faster on this machine and stays in the namespace: GELU forward 328/1075 and backward
# 606/929 and tanh (numpy's exp and tanh are SIMD loops; numba calls libm one element at a time
# without Intel's SVML), the cross-entropy forward 139/415 (the same reason: exp), the attention
# backward 297/329 (its work is the four products; the softmax part is small).
OPS = ("layernorm_forward", "layernorm_backward", "attention_forward", "cross_entropy_backward",
       "embedding_backward")
KERNELS = OPS + ("gelu_forward", "gelu_backward", "tanh_forward", "tanh_backward", "activation_forward",
                 "activation_backward", "attention_backward", "cross_entropy_forward")

# Below this many elements a kernel runs on the calling thread alone: waking a passive OpenMP thread
# costs more than it saves (LayerNorm of 128 x 512: 28 us on one thread, 100 us on two).
PARALLEL_MIN = 1 << 17

_MAX_THREADS = numba.config.NUMBA_NUM_THREADS


def sync_threads(size: int = PARALLEL_MIN) -> int:
    """Set numba's thread count (thread-local) to the count in force (:func:`cllm.kernels.threads`,
    BLAS's), or to 1 for work of fewer than ``PARALLEL_MIN`` elements; return it."""
    n = 1 if size < PARALLEL_MIN else max(1, min(threads(), _MAX_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


def threading_layer() -> str:
    """The threading layer numba loaded (a tiny parallel call loads it). Where no thread-safe layer can
    load, falls back to numba's own ``workqueue``, which the data-parallel step must not enter from
    two threads at once (see :func:`cllm.kernels.threadsafe`)."""
    if _layer:
        return _layer[0]
    x = np.zeros(4)
    # OpenMP's threads spin for a while after each parallel region (OMP_WAIT_POLICY's default), and
    # between two kernels come BLAS calls that want those cores: measured on 2 cores, a LayerNorm
    # backward followed by a (128, 512) @ (512, 2048) product took 8.9 ms with spinning threads against
    # 2.1 ms with PASSIVE ones (the product alone 1.8 ms). The OpenMP runtime reads the variable once,
    # when it loads, here; it is set for that moment only (a user's value wins) and then restored, so
    # a library that loads its own OpenMP later (torch) keeps its default.
    before = os.environ.get("OMP_WAIT_POLICY")
    if before is None:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        try:
            K.scale_(x, 1.0)
        except ValueError:  # "No threading layer could be loaded"
            numba.config.THREADING_LAYER = "workqueue"
            K.scale_(x, 1.0)
    finally:
        if before is None:
            os.environ.pop("OMP_WAIT_POLICY", None)
    _layer.append(numba.threading_layer())
    return _layer[0]


_layer = []
threading_layer()  # load the layer now, before any kernel runs


def _c(a):
    return np.ascontiguousarray(a)


# ------------------------------------------------------------------------------------- LayerNorm
def layernorm_forward(x, w, b, eps=LN_EPS):
    """As :func:`cllm.ops.layernorm_forward`: (out, mean, rstd)."""
    sync_threads(x.size)
    C = x.shape[-1]
    out, mean, rstd = K.layernorm_forward(_c(x).reshape(-1, C), _c(w), _c(b), float(eps))  # (N, C), (N,), (N,)
    lead = x.shape[:-1]
    return out.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)


def layernorm_backward(dout, x, w, mean, rstd):
    """As :func:`cllm.ops.layernorm_backward`: (dx, dw, db)."""
    sync_threads(x.size)
    C = x.shape[-1]
    dx, dw, db = K.layernorm_backward(_c(dout).reshape(-1, C), _c(x).reshape(-1, C), _c(w),
                                      _c(mean).reshape(-1), _c(rstd).reshape(-1))
    return dx.reshape(x.shape), dw, db


# ------------------------------------------------------------------------------------- activations
def gelu_forward(x):
    sync_threads(x.size)
    return K.gelu_forward(_c(x))


def gelu_backward(dout, x):
    sync_threads(x.size)
    return K.gelu_backward(_c(dout), _c(x))


def tanh_forward(x):
    sync_threads(x.size)
    return K.tanh_forward(_c(x))


def tanh_backward(dout, x):
    sync_threads(x.size)
    return K.tanh_backward(_c(dout), _c(x))


MLP_ACTIVATIONS = {"gelu": (gelu_forward, gelu_backward), "tanh": (tanh_forward, tanh_backward)}


def activation_forward(x, name="gelu"):
    return MLP_ACTIVATIONS[name][0](x)


def activation_backward(dout, x, name="gelu"):
    return MLP_ACTIVATIONS[name][1](dout, x)


# ------------------------------------------------------------------------------------- attention
def attention_forward(qkv, n_heads, bias=None, dropout_p=0.0, rng=None):
    """As :func:`cllm.ops.attention_forward`; the causal mask and the softmax are one kernel."""
    q, k, v = split_heads(qkv, n_heads)  # (B, H, T, hd) each, fresh copies
    sync_threads(q.shape[0] * q.shape[1] * q.shape[2] ** 2)  # B H T^2 scores
    q *= 1.0 / math.sqrt(q.shape[-1])
    scores = q @ k.swapaxes(-1, -2)  # (B, H, T, hd) @ (B, H, hd, T) -> (B, H, T, T)
    if bias is not None:
        scores += bias
    probs = K.causal_softmax_(scores)  # (B, H, T, T), in place: rows sum to 1, 0 above the diagonal
    att, mask = attention_dropout(probs, dropout_p, rng)  # (B, H, T, T), mask or None
    y = att @ v  # (B, H, T, T) @ (B, H, T, hd) -> (B, H, T, hd)
    return merge_heads(y), probs, mask  # (B, T, C)


def attention_backward(dy, qkv, probs, n_heads, mask=None, return_dscores=False):
    """As :func:`cllm.ops.attention_backward`; the softmax backward is one kernel over the causal rows."""
    sync_threads(probs.size)
    B, T, C3 = qkv.shape
    hd = C3 // 3 // n_heads
    q, k, v = split_heads(qkv, n_heads)  # (B, H, T, hd), fresh copies
    scale = 1.0 / math.sqrt(hd)
    q *= scale
    k *= scale
    dy = dy.reshape(B, T, n_heads, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd) view
    att = probs if mask is None else probs * mask
    dqkv = np.empty((B, T, 3, n_heads, hd), dtype=qkv.dtype)  # (B, T, 3, H, hd)
    dq, dk, dv = (dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, H, T, hd) views
    np.matmul(att.swapaxes(-1, -2), dy, out=dv)  # (B, H, T, hd)
    datt = dy @ v.swapaxes(-1, -2)  # (B, H, T, T)
    if mask is not None:
        datt *= mask
    dscores = K.causal_softmax_backward_(datt, _c(probs))  # (B, H, T, T), in place on datt
    np.matmul(dscores, k, out=dq)  # (B, H, T, hd)
    np.matmul(dscores.swapaxes(-1, -2), q, out=dk)  # (B, H, T, hd)
    dqkv = dqkv.reshape(B, T, C3)  # (B, T, 3C)
    return (dqkv, dscores) if return_dscores else dqkv


# ------------------------------------------------------------------------------------- cross-entropy
def cross_entropy_forward(logits, targets, ignore_index=None):
    """As :func:`cllm.ops.cross_entropy_forward`: (loss as a float, probs)."""
    sync_threads(logits.size)
    V = logits.shape[-1]
    scored_targets(targets, V, ignore_index)  # a ValueError for a target outside [0, V), before any kernel reads it
    t = _c(targets).reshape(-1).astype(np.int64, copy=False)  # (N,)
    probs, nll, n_valid = K.cross_entropy_forward(_c(logits).reshape(-1, V), t, ignore_index is not None,
                                                  0 if ignore_index is None else int(ignore_index))
    loss = float(nll.sum() / n_valid) if n_valid else 0.0
    return loss, probs.reshape(logits.shape)


def cross_entropy_backward(probs, targets, ignore_index=None):
    """As :func:`cllm.ops.cross_entropy_backward`."""
    sync_threads(probs.size)
    V = probs.shape[-1]
    _, valid = scored_targets(targets, V, ignore_index)  # (N,); a ValueError for a target outside [0, V)
    t = _c(targets).reshape(-1).astype(np.int64, copy=False)  # (N,)
    n_valid = int(valid.sum())
    d = K.cross_entropy_backward(_c(probs).reshape(-1, V), t, ignore_index is not None,
                                 0 if ignore_index is None else int(ignore_index), 1.0 / max(n_valid, 1))
    return d.reshape(probs.shape)


# ------------------------------------------------------------------------------------- embedding
def embedding_backward(dout, idx, vocab_size):
    """As :func:`cllm.ops.embedding_backward`: the (V, C) scatter-add of ``dout`` at ``idx``."""
    sync_threads(dout.size)
    C = dout.shape[-1]
    ids = _c(idx).reshape(-1).astype(np.int64, copy=False)  # (N,)
    return K.embedding_backward(_c(dout).reshape(-1, C), ids, int(vocab_size))


# ------------------------------------------------------------------------------------- optimizer
def clip_grad_norm(grads, max_norm: float) -> float:
    """As :func:`cllm.optim.clip_grad_norm`: the sums of squares accumulated in float64 by a kernel."""
    total = 0.0
    for g in grads.values():
        sync_threads(g.size)
        total += K.sum_squares(g.reshape(-1))
    norm = math.sqrt(total)
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            sync_threads(g.size)
            K.scale_(g.reshape(-1), scale)
    return norm


def adamw_step(opt, flat_p, flat_g) -> None:
    """One AdamW update of every tensor of ``opt`` (a :class:`cllm.optim.AdamW` after ``_begin_step``),
    one fused pass each; the per-step scalars in each tensor's dtype (as numpy rounds them)."""
    m_sum, v_sum = opt.state["m_sum"], opt.state["v_sum"]
    for name, p in flat_p.items():
        sync_threads(p.size)  # the biases and LayerNorm gains on the calling thread alone
        dt = p.dtype.type
        shrink = opt._shrink if opt.decayed[name] else 1.0
        K.adamw_(p, flat_g[name], m_sum[name], v_sum[name], dt(shrink), dt(opt.beta1), dt(opt.beta2),
                 dt(opt._k), dt(opt._e))


def warmup(dtypes=("float32",)) -> float:
    """Compile (or load from the cache) every kernel for ``dtypes``; return the seconds it took."""
    import time

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for dt in dtypes:
        x = rng.standard_normal((2, 4, 8)).astype(dt)
        w, b = np.ones(8, dt), np.zeros(8, dt)
        out, mean, rstd = layernorm_forward(x, w, b)
        layernorm_backward(x, x, w, mean, rstd)
        for name in MLP_ACTIVATIONS:
            activation_backward(x, x, name)
            activation_forward(x, name)
        qkv = rng.standard_normal((2, 4, 24)).astype(dt)
        y, probs, _ = attention_forward(qkv, 2)
        attention_backward(y, qkv, probs, 2)
        t = rng.integers(0, 8, (2, 4))
        _, p = cross_entropy_forward(x, t)
        cross_entropy_backward(p, t)
        cross_entropy_forward(x, t, ignore_index=0)
        cross_entropy_backward(p, t, ignore_index=0)
        embedding_backward(x, t, 8)
        g = {"a": x.copy()}
        clip_grad_norm(g, 1e-3)
        K.adamw_(x.reshape(-1), x.reshape(-1).copy(), np.zeros(64, dt), np.zeros(64, dt), *(x.dtype.type(s) for s in (0.9, 0.9, 0.99, 1e-3, 1e-8)))
    return time.perf_counter() - t0
