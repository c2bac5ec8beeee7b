"""Causal multi-head self-attention on a fused QKV tensor, batched over (B, H, T, hd).

The projections around it (``c_attn`` producing qkv, ``c_proj`` mixing the heads) are ordinary
linear layers; this op is the part between them:

    q, k, v = split(qkv)                               (B, H, T, hd) each
    scores  = q k^T / sqrt(hd) + bias + causal mask    (B, H, T, T)
    probs   = softmax(scores)                          rows sum to 1, zero above the diagonal
    y       = probs v, heads merged back               (B, T, C)
"""
import math
from functools import lru_cache

import numpy as np

from .softmax import softmax_forward


@lru_cache(maxsize=32)
def _causal_mask(T, dtype):
    mask = np.zeros((T, T), dtype=dtype)
    mask[np.triu_indices(T, k=1)] = -np.inf
    mask.setflags(write=False)  # shared between calls: read-only
    return mask


def causal_mask(T, dtype=np.float64):
    """Additive mask (T, T): 0 where key j <= query i, -inf where j > i (the future). Built once per
    (T, dtype) and shared (read-only)."""
    return _causal_mask(int(T), np.dtype(dtype))


def split_heads(qkv, n_heads):
    """(B, T, 3C) -> q, k, v, each (B, H, T, hd) and contiguous (one copy, so BLAS sees plain matrices)."""
    B, T, C3 = qkv.shape
    hd = C3 // (3 * n_heads)
    qkv5 = qkv.reshape(B, T, 3, n_heads, hd).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, hd) view
    q, k, v = np.ascontiguousarray(qkv5)  # one copy, then three views
    return q, k, v


def merge_heads(y):
    """(B, H, T, hd) -> (B, T, C)."""
    B, H, T, hd = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, H * hd)


def attention_dropout(probs, dropout_p, rng):
    """Dropout on the attention probabilities -> (probs to use, mask or None). The mask holds 0 or
    1 / (1 - p), so the kept weights are rescaled; ``rng`` draws it (the fused kernels draw the same)."""
    if dropout_p <= 0.0:
        return probs, None
    keep = rng.random(probs.shape) >= dropout_p
    mask = keep.astype(probs.dtype) * (1.0 / (1.0 - dropout_p))
    return probs * mask, mask


def attention_forward(qkv, n_heads, bias=None, dropout_p=0.0, rng=None):
    """Causal self-attention. ``qkv`` (B, T, 3C); ``bias`` broadcastable to (B, H, T, T) or None.

    Returns (y (B, T, C), probs (B, H, T, T), dropout mask or None). ``probs`` is saved for the
    backward pass; dropout, when on, acts on the probabilities (as in GPT-2).
    """
    B, T, C3 = qkv.shape
    q, k, v = split_heads(qkv, n_heads)  # (B, H, T, hd) each, fresh copies
    q *= 1.0 / math.sqrt(q.shape[-1])  # scale the queries (B H T hd values) rather than the scores
    scores = q @ k.swapaxes(-1, -2)  # (B, H, T, hd) @ (B, H, hd, T) -> (B, H, T, T)
    if bias is not None:
        scores += bias
    scores += causal_mask(T, scores.dtype)  # future positions -> -inf
    probs = softmax_forward(scores, out=scores)  # (B, H, T, T), each row sums to 1 (in place)
    att, mask = attention_dropout(probs, dropout_p, rng)  # (B, H, T, T), mask or None
    y = att @ v  # (B, H, T, T) @ (B, H, T, hd) -> (B, H, T, hd)
    return merge_heads(y), probs, mask  # (B, T, C)


def attention_backward(dy, qkv, probs, n_heads, mask=None, return_dscores=False):
    """Return dqkv (B, T, 3C) [and dscores (B, H, T, T), the gradient of the pre-softmax scores,
    which is also the gradient of any additive bias].

    The plain chain rule, in the order it is computed below:

        datt    = dy v^T                       dv = att^T dy
        dscores = p * (datt - rowsum(datt * p))       (softmax backward; masked entries have p = 0)
        dq      = dscores k / sqrt(hd)         dk = dscores^T q / sqrt(hd)

    Written to allocate little: the softmax backward works in place on ``datt``, the scale is folded
    into the (fresh) q and k copies, and dq, dk, dv are written straight into the (B, T, 3, H, hd)
    layout of dqkv instead of being transposed into it afterwards.
    """
    B, T, C3 = qkv.shape
    C = C3 // 3
    hd = C // n_heads
    q, k, v = split_heads(qkv, n_heads)  # (B, H, T, hd), fresh copies we may modify
    scale = 1.0 / math.sqrt(hd)
    q *= scale
    k *= scale
    dy = dy.reshape(B, T, n_heads, hd).transpose(0, 2, 1, 3)  # (B, T, C) -> (B, H, T, hd) view
    att = probs if mask is None else probs * mask
    dqkv = np.empty((B, T, 3, n_heads, hd), dtype=qkv.dtype)  # (B, T, 3, H, hd)
    dq, dk, dv = (dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, H, T, hd) views
    np.matmul(att.swapaxes(-1, -2), dy, out=dv)  # (B, H, T, T) @ (B, H, T, hd) -> (B, H, T, hd)
    datt = dy @ v.swapaxes(-1, -2)  # (B, H, T, hd) @ (B, H, hd, T) -> (B, H, T, T)
    if mask is not None:
        datt *= mask  # dropout backward
    # softmax backward, in place: dscores = p * (datt - sum_j datt * p)
    datt -= np.einsum("bhij,bhij->bhi", datt, probs)[..., None]
    datt *= probs
    dscores = datt  # (B, H, T, T)
    np.matmul(dscores, k, out=dq)  # (B, H, T, T) @ (B, H, T, hd) -> (B, H, T, hd), k carries the scale
    np.matmul(dscores.swapaxes(-1, -2), q, out=dk)  # (B, H, T, hd), q carries the scale
    dqkv = dqkv.reshape(B, T, C3)  # (B, T, 3C)
    return (dqkv, dscores) if return_dscores else dqkv


def cached_attention_forward(q, k_all, v_all, start, bias=None):
    """Attention of new queries against every key so far (incremental decoding with a KV cache).

    ``q`` (B, H, t, hd) are the queries of positions start .. start+t-1; ``k_all``, ``v_all``
    (B, H, start+t, hd) hold the keys and values of positions 0 .. start+t-1. Query i may look at keys
    j <= start + i, which is the causal mask of :func:`attention_forward` shifted by ``start``.
    Returns y (B, t, C) and probs (B, H, t, start+t).
    """
    t, S = q.shape[2], k_all.shape[2]
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k_all.swapaxes(-1, -2)  # (B, H, t, S)
    if bias is not None:
        scores += bias
    future = np.arange(S)[None, :] > (start + np.arange(t))[:, None]  # (t, S)
    scores[..., future] = -np.inf
    probs = softmax_forward(scores)
    return merge_heads(probs @ v_all), probs  # (B, H, t, hd) -> (B, t, C)
