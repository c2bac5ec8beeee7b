"""Layer normalisation over the last axis, saving mean and reciprocal standard deviation."""
import numpy as np

LN_EPS = 1e-5


def layernorm_forward(x, w, b, eps=LN_EPS):
    """Normalise ``x`` (..., C) to zero mean and unit variance, then scale by ``w`` and shift by ``b``.

    Returns (out, mean, rstd) with mean and rstd of shape (...,): exactly what the backward needs.
    """
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mean  # (..., C)
    var = np.mean(xc * xc, axis=-1, keepdims=True)  # (..., 1), biased variance as in PyTorch
    rstd = 1.0 / np.sqrt(var + eps)  # (..., 1)
    out = xc * rstd  # normalised x, (..., C)
    out *= w
    out += b
    return out, mean[..., 0], rstd[..., 0]


def layernorm_backward(dout, x, w, mean, rstd):
    """Return (dx, dw, db).

    With xhat = (x - mean) * rstd and g = dout * w, the input gradient is
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), the means taken over the normalised axis.
    """
    C = x.shape[-1]
    rstd = rstd[..., None]  # (..., 1)
    xhat = (x - mean[..., None]) * rstd  # (..., C)
    g = dout * w  # (..., C)
    g_mean = g.mean(axis=-1, keepdims=True)  # (..., 1)
    gx_mean = np.mean(g * xhat, axis=-1, keepdims=True)  # (..., 1)
    dx = (g - g_mean - xhat * gx_mean) * rstd  # (..., C)
    dw = (dout * xhat).reshape(-1, C).sum(axis=0)  # (C,)
    db = dout.reshape(-1, C).sum(axis=0)  # (C,)
    return dx, dw, db
