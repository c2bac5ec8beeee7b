"""Inverted dropout: the mask is drawn in the forward pass and kept for the backward pass."""
import numpy as np


def dropout_forward(x, p, rng):
    """Zero each entry with probability ``p`` and scale the rest by 1/(1-p).

    Returns (out, mask) where mask already carries the 1/(1-p) scale (so backward is one multiply).
    ``p == 0`` is the identity and returns mask None.
    """
    if p == 0.0:
        return x, None
    keep = rng.random(x.shape) >= p  # (same shape as x) bool
    mask = keep.astype(x.dtype) * (1.0 / (1.0 - p))
    return x * mask, mask


def dropout_backward(dout, mask):
    """Gradient flows only through the kept entries, with the same scale."""
    return dout if mask is None else dout * mask
