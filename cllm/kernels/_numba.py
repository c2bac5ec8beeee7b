"""The fused kernels themselves, compiled by numba (imported only through :mod:`cllm.kernels`).

Each kernel computes the same function as its numpy op in :mod:`cllm.ops` (or :mod:`cllm.optim`), in
one pass over the data where numpy needs several: a row of LayerNorm, softmax or cross-entropy is read
once into the cache and finished there. Parallel over rows (``prange``); every row (or element) is
computed by one thread from start to end, and every reduction across rows goes through a fixed number
of blocks added in a fixed order, so the result does not depend on the thread count (bit for bit).

Arithmetic stays in the arrays' dtype, as in numpy, except the row sums (means, variances, softmax
denominators, the loss), which are accumulated in float64 and rounded once: in float32 that is at
least as accurate as numpy's float32 sums, so the two agree within float32 rounding.

``cache=True`` writes the compiled code next to this file (``__pycache__``, ignored by git); where
that folder is read-only numba uses ``NUMBA_CACHE_DIR`` or the user's cache folder, and where no
folder is writable the kernels are compiled without a cache (``_jit`` below).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

_S = math.sqrt(2.0 / math.pi)  # GELU's sqrt(2 / pi), as in cllm/ops/gelu.py
_K = 0.044715
BLOCKS = 16  # reductions across rows or elements: this many partial sums, added in order

CACHED = True  # False where no cache folder was writable (compiled afresh in every process)


def _jit(fn=None, parallel=True, reassoc=False):
    """``numba.njit(parallel=..., cache=True)``; without the cache where numba finds no writable folder.

    ``reassoc``: let LLVM reorder the additions of a row's sums so that it can vectorise them (the
    fast-math flag "reassoc" only: no approximate functions, no contraction into FMAs). The order is
    fixed when the kernel is compiled, so results stay deterministic; they differ from the sequential
    order by rounding only."""
    fastmath = {"reassoc"} if reassoc else False
    def wrap(f):
        global CACHED
        try:
            return numba.njit(parallel=parallel, cache=True, error_model="numpy", fastmath=fastmath)(f)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            CACHED = False
            return numba.njit(parallel=parallel, cache=False, error_model="numpy", fastmath=fastmath)(f)
    return wrap if fn is None else wrap(fn)


# ------------------------------------------------------------------------------------- elementwise
@numba.njit(inline="always", error_model="numpy")
def _tanh(u, one, two):
    """tanh(u) = 1 - 2 / (exp(2u) + 1): numba's np.tanh calls the scalar libm tanh (about 12 ns an
    element here, 10x numpy's vectorised one); the exp form is 5x faster, exact at +-inf, and off by
    at most a few units of the dtype's epsilon in absolute terms near 0."""
    return one - two / (np.exp(two * u) + one)


@_jit
def gelu_forward(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise; x any shape (flattened)."""
    xf = x.reshape(-1)
    out = np.empty_like(xf)
    s, k, half, one = xf.dtype.type(_S), xf.dtype.type(_K), xf.dtype.type(0.5), xf.dtype.type(1.0)
    for i in prange(xf.size):
        v = xf[i]
        out[i] = half * v * (one + _tanh(s * (v + k * v * v * v), one, one + one))
    return out.reshape(x.shape)


@_jit
def gelu_backward(dout, x):
    """dout * (0.5 (1 + t) + 0.5 sqrt(2/pi) x (1 - t^2) (1 + 3 * 0.044715 x^2)), t = tanh(...)."""
    xf, df = x.reshape(-1), dout.reshape(-1)
    out = np.empty_like(xf)
    dt = xf.dtype.type
    s, k, k3, half, one = dt(_S), dt(_K), dt(3.0 * _K), dt(0.5), dt(1.0)
    hs = dt(0.5 * _S)
    for i in prange(xf.size):
        v = xf[i]
        t = _tanh(s * (v + k * v * v * v), one, one + one)
        out[i] = df[i] * (half * (one + t) + hs * v * (one - t * t) * (one + k3 * v * v))
    return out.reshape(x.shape)


@_jit
def tanh_forward(x):
    xf = x.reshape(-1)
    out = np.empty_like(xf)
    one = xf.dtype.type(1.0)
    for i in prange(xf.size):
        out[i] = _tanh(xf[i], one, one + one)
    return out.reshape(x.shape)


@_jit
def tanh_backward(dout, x):
    """dout * (1 - tanh(x)^2)."""
    xf, df = x.reshape(-1), dout.reshape(-1)
    out = np.empty_like(xf)
    one = xf.dtype.type(1.0)
    for i in prange(xf.size):
        t = _tanh(xf[i], one, one + one)
        out[i] = df[i] * (one - t * t)
    return out.reshape(x.shape)


# ------------------------------------------------------------------------------------- LayerNorm
@_jit(reassoc=True)
def layernorm_forward(x2, w, b, eps):
    """x2 (N, C) -> out (N, C), mean (N,), rstd (N,): one pass per row for the sums, one to write."""
    N, C = x2.shape
    out = np.empty_like(x2)
    mean = np.empty(N, dtype=x2.dtype)
    rstd = np.empty(N, dtype=x2.dtype)
    for r in prange(N):
        s = 0.0
        for j in range(C):
            s += x2[r, j]
        m = x2.dtype.type(s / C)
        q = 0.0
        for j in range(C):
            d = x2[r, j] - m
            q += d * d
        rs = x2.dtype.type(1.0 / math.sqrt(q / C + eps))
        mean[r] = m
        rstd[r] = rs
        for j in range(C):
            out[r, j] = (x2[r, j] - m) * rs * w[j] + b[j]
    return out, mean, rstd


@_jit(reassoc=True)
def layernorm_backward(d2, x2, w, mean, rstd):
    """dx (N, C) = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * w; dw, db (C,) summed over
    rows in ``BLOCKS`` blocks of rows (partials added in block order: independent of the thread count)."""
    N, C = x2.shape
    dx = np.empty_like(x2)
    nb = min(BLOCKS, N)
    pdw = np.zeros((nb, C), dtype=np.float64)
    pdb = np.zeros((nb, C), dtype=np.float64)
    for blk in prange(nb):
        lo, hi = blk * N // nb, (blk + 1) * N // nb
        for r in range(lo, hi):
            m, rs = mean[r], rstd[r]
            sg = 0.0
            sgx = 0.0
            for j in range(C):
                xh = (x2[r, j] - m) * rs
                g = d2[r, j] * w[j]
                sg += g
                sgx += g * xh
                pdw[blk, j] += d2[r, j] * xh
                pdb[blk, j] += d2[r, j]
            gm = x2.dtype.type(sg / C)
            gxm = x2.dtype.type(sgx / C)
            for j in range(C):
                xh = (x2[r, j] - m) * rs
                dx[r, j] = (d2[r, j] * w[j] - gm - xh * gxm) * rs
    dw = np.empty(C, dtype=x2.dtype)
    db = np.empty(C, dtype=x2.dtype)
    for j in range(C):
        a = 0.0
        c = 0.0
        for blk in range(nb):
            a += pdw[blk, j]
            c += pdb[blk, j]
        dw[j] = a
        db[j] = c
    return dx, dw, db


# ------------------------------------------------------------------------------------- attention
@_jit(reassoc=True)
def causal_softmax_(s4):
    """In place on scores (B, H, T, T): softmax of row i over keys j <= i, 0 above the diagonal (the
    causal mask and ``softmax_forward`` in one pass; the future entries are never exponentiated)."""
    B, H, T, _ = s4.shape
    s = s4.reshape(B * H * T, T)
    zero = s.dtype.type(0.0)
    for r in prange(B * H * T):
        i = r % T
        m = s[r, 0]
        for j in range(1, i + 1):
            if s[r, j] > m:
                m = s[r, j]
        tot = 0.0
        for j in range(i + 1):
            e = np.exp(s[r, j] - m)
            s[r, j] = e
            tot += e
        inv = s.dtype.type(1.0 / tot)
        for j in range(i + 1):
            s[r, j] *= inv
        for j in range(i + 1, T):
            s[r, j] = zero
    return s4


@_jit(reassoc=True)
def causal_softmax_backward_(d4, p4):
    """In place on datt (B, H, T, T): p * (datt - sum_j datt * p) over j <= i, 0 above the diagonal."""
    B, H, T, _ = d4.shape
    d = d4.reshape(B * H * T, T)
    p = p4.reshape(B * H * T, T)
    zero = d.dtype.type(0.0)
    for r in prange(B * H * T):
        i = r % T
        acc = 0.0
        for j in range(i + 1):
            acc += d[r, j] * p[r, j]
        a = d.dtype.type(acc)
        for j in range(i + 1):
            d[r, j] = p[r, j] * (d[r, j] - a)
        for j in range(i + 1, T):
            d[r, j] = zero
    return d4


# ------------------------------------------------------------------------------------- cross-entropy
@_jit(reassoc=True)
def cross_entropy_forward(z, t, has_ignore, ignore):
    """z (N, V) logits, t (N,) targets -> probs (N, V), nll (N,) float64 (0 on ignored rows), n_valid;
    with ``has_ignore``, rows whose target is ``ignore`` do not count."""
    N, V = z.shape
    probs = np.empty_like(z)
    nll = np.zeros(N, dtype=np.float64)
    valid = np.zeros(N, dtype=np.int64)
    for r in prange(N):
        m = z[r, 0]
        for j in range(1, V):
            if z[r, j] > m:
                m = z[r, j]
        tot = 0.0
        for j in range(V):
            e = np.exp(z[r, j] - m)
            probs[r, j] = e
            tot += e
        inv = z.dtype.type(1.0 / tot)
        for j in range(V):
            probs[r, j] *= inv
        if not has_ignore or t[r] != ignore:
            valid[r] = 1
            nll[r] = m + math.log(tot) - z[r, t[r]]
    return probs, nll, valid.sum()


@_jit
def cross_entropy_backward(p, t, has_ignore, ignore, inv_n):
    """(softmax - onehot(target)) * inv_n; with ``has_ignore``, rows whose target is ``ignore`` get 0."""
    N, V = p.shape
    d = np.empty_like(p)
    scale = p.dtype.type(inv_n)
    one = p.dtype.type(1.0)
    zero = p.dtype.type(0.0)
    for r in prange(N):
        if has_ignore and t[r] == ignore:
            for j in range(V):
                d[r, j] = zero
            continue
        for j in range(V):
            d[r, j] = p[r, j]
        d[r, t[r]] -= one
        for j in range(V):
            d[r, j] *= scale
    return d


# ------------------------------------------------------------------------------------- embedding
@_jit
def embedding_backward(d2, ids, V):
    """Scatter-add d2 (N, C) into a (V, C) table at rows ids (N,): parallel over blocks of columns, so
    every entry is added by one thread in row order (repeated ids accumulate, as np.add.at)."""
    N, C = d2.shape
    out = np.zeros((V, C), dtype=d2.dtype)
    nb = min(BLOCKS, C)
    for blk in prange(nb):
        lo, hi = blk * C // nb, (blk + 1) * C // nb
        for r in range(N):
            row = ids[r]
            for j in range(lo, hi):
                out[row, j] += d2[r, j]
    return out


# ------------------------------------------------------------------------------------- optimizer
@_jit(reassoc=True)
def sum_squares(g):
    """Sum of g*g over a flat array, in float64, as BLOCKS partial sums added in order."""
    n = g.size
    nb = min(BLOCKS, max(n, 1))
    part = np.zeros(nb, dtype=np.float64)
    for blk in prange(nb):
        lo, hi = blk * n // nb, (blk + 1) * n // nb
        s = 0.0
        for i in range(lo, hi):
            s += g[i] * g[i]
        part[blk] = s
    tot = 0.0
    for blk in range(nb):
        tot += part[blk]
    return tot


@_jit
def scale_(g, s):
    """g *= s in place (flat array)."""
    c = g.dtype.type(s)
    for i in prange(g.size):
        g[i] *= c


@_jit
def adamw_(p, g, m, v, shrink, b1, b2, k, e):
    """AdamW on the exponential sums, in one pass over flat p, g, m, v (see cllm.optim.AdamW):

        p *= shrink;  m = b1 m + g;  v = b2 v + g g;  p -= k m / (sqrt(v) + e)

    The scalars arrive in the arrays' dtype, so every operation rounds as numpy's chunked step does."""
    decay = shrink != 1.0
    for i in prange(p.size):
        gi = g[i]
        mi = m[i] * b1 + gi
        vi = v[i] * b2 + gi * gi
        m[i] = mi
        v[i] = vi
        pi = p[i]
        if decay:
            pi = pi * shrink
        p[i] = pi - mi / (np.sqrt(vi) + e) * k
