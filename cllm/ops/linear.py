"""Linear layer y = x W + b, with W stored (in, out) as in GPT-2."""
import numpy as np


def linear_forward(x, w, b=None):
    """``x`` (..., I) @ ``w`` (I, O) + ``b`` (O,) -> (..., O). One 2-D matmul over all leading rows."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # (..., I) -> (N, I)
    y = x2 @ w  # (N, I) @ (I, O) -> (N, O)
    if b is not None:
        y += b
    return y.reshape(*lead, w.shape[1])  # (N, O) -> (..., O)


def linear_backward(dout, x, w, has_bias=True, dw=None, db=None):
    """Return (dx, dw, db) for y = x w + b. ``db`` is None when ``has_bias`` is False.

    ``dw`` and ``db`` may be given as preallocated arrays to write the parameter gradients into
    (a training loop reuses one set of gradient buffers instead of allocating them every step).
    """
    O = w.shape[1]
    d2 = dout.reshape(-1, O)  # (..., O) -> (N, O)
    x2 = x.reshape(-1, x.shape[-1])  # (N, I)
    dx = (d2 @ w.T).reshape(x.shape)  # (N, O) @ (O, I) -> (N, I) -> (..., I)
    dw = np.matmul(x2.T, d2, out=dw)  # (I, N) @ (N, O) -> (I, O)
    db = np.sum(d2, axis=0, out=db) if has_bias else None  # (O,)
    return dx, dw, db
