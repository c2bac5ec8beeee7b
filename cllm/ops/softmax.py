"""Numerically stable softmax and log-softmax over the last axis."""
import numpy as np


def softmax_forward(x, axis=-1, out=None):
    """exp(x - max) / sum(exp(x - max)): subtracting the row max keeps every exp in (0, 1].

    Entries equal to -inf (masked) get probability exactly 0. ``out`` (may be ``x`` itself) receives
    the result instead of a new array.
    """
    z = np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def softmax_backward(dout, probs, axis=-1):
    """Vector-Jacobian product of softmax: p * (dout - sum(dout * p))."""
    return probs * (dout - np.sum(dout * probs, axis=axis, keepdims=True))


def log_softmax(x, axis=-1):
    """x - logsumexp(x), with the log-sum-exp computed after subtracting the max."""
    m = x.max(axis=axis, keepdims=True)
    return x - (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)))
