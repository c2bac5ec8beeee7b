"""Pointwise activations of the MLP: GELU (tanh approximation, as in GPT-2) and plain tanh."""
import math

import numpy as np

_S = math.sqrt(2.0 / math.pi)  # sqrt(2 / pi)
_K = 0.044715


def gelu_forward(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    t = np.tanh(_S * (x + _K * x * x * x))
    return 0.5 * x * (1.0 + t)


def gelu_backward(dout, x):
    """d/dx of the tanh-approximate GELU, times ``dout``; recomputes tanh from the saved input."""
    x2 = x * x
    t = np.tanh(_S * x * (1.0 + _K * x2))
    # d gelu / dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    grad = 0.5 * (1.0 + t) + (0.5 * _S) * x * (1.0 - t * t) * (1.0 + 3.0 * _K * x2)
    return dout * grad


def tanh_forward(x):
    """tanh, the activation the earlier C code used in its feed-forward layers."""
    return np.tanh(x)


def tanh_backward(dout, x):
    """d tanh(x) / dx = 1 - tanh(x)^2, times ``dout``."""
    t = np.tanh(x)
    return dout * (1.0 - t * t)


ACTIVATIONS = {
    "gelu": (gelu_forward, gelu_backward),
    "tanh": (tanh_forward, tanh_backward),
}


def activation_forward(x, name="gelu"):
    """Apply the activation called ``name`` ("gelu" or "tanh")."""
    return ACTIVATIONS[name][0](x)


def activation_backward(dout, x, name="gelu"):
    """Backward of :func:`activation_forward` from its saved input ``x``."""
    return ACTIVATIONS[name][1](dout, x)
