"""Layer normalisation over the last axis, saving mean and reciprocal standard deviation."""
import numpy as np

LN_EPS = 1e-5


def _row_mean(a2, C):
    """Mean of each row of a 2-D array as one matrix-vector product (N, C) @ (C,) -> (N,).

    Same value as ``a2.mean(axis=1)``; numpy's reductions over short rows (C ~ 100-1000) run several
    times slower than BLAS's matrix-vector kernel, and LayerNorm takes four such means per call.
    """
    return a2 @ np.full(C, 1.0 / C, dtype=a2.dtype)


def layernorm_forward(x, w, b, eps=LN_EPS):
    """Normalise ``x`` (..., C) to zero mean and unit variance, then scale by ``w`` and shift by ``b``.

    Returns (out, mean, rstd) with mean and rstd of shape (...,): exactly what the backward needs.
    Plain form: ``mean = x.mean(-1); rstd = 1 / sqrt(x.var(-1) + eps); out = (x - mean) * rstd * w + b``.
    """
    C = x.shape[-1]
    x2 = x.reshape(-1, C)  # (N, C)
    mean = _row_mean(x2, C)  # (N,)
    xc = x2 - mean[:, None]  # (N, C)
    var = _row_mean(xc * xc, C)  # (N,), biased variance as in PyTorch
    rstd = 1.0 / np.sqrt(var + eps)  # (N,)
    xc *= rstd[:, None]  # normalised x
    xc *= w
    xc += b
    lead = x.shape[:-1]
    return xc.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)


def layernorm_backward(dout, x, w, mean, rstd):
    """Return (dx, dw, db).

    With xhat = (x - mean) * rstd and g = dout * w, the input gradient is
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), the means taken over the normalised axis.
    """
    C = x.shape[-1]
    x2 = x.reshape(-1, C)  # (N, C)
    d2 = dout.reshape(-1, C)  # (N, C)
    r = rstd.reshape(-1, 1)  # (N, 1)
    xhat = x2 - mean.reshape(-1, 1)
    xhat *= r  # (N, C)
    g = d2 * w  # (N, C)
    g_mean = _row_mean(g, C)[:, None]  # (N, 1)
    t = g * xhat  # (N, C)
    gx_mean = _row_mean(t, C)[:, None]  # (N, 1)
    np.multiply(d2, xhat, out=t)
    dw = t.sum(axis=0)  # (C,)
    db = d2.sum(axis=0)  # (C,)
    xhat *= gx_mean
    g -= g_mean
    g -= xhat
    g *= r  # dx
    return g.reshape(x.shape), dw, db
