"""GELU, the MLP activation of GPT-2 (its tanh approximation), forward and backward."""
import math

import numpy as np

_S = math.sqrt(2.0 / math.pi)  # sqrt(2 / pi)
_K = 0.044715


def gelu_forward(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    Plain form: ``0.5 * x * (1 + np.tanh(_S * (x + _K * x**3)))``. Written in place below so that one
    buffer the size of ``x`` is allocated instead of six (the MLP activation is the largest tensor).
    """
    t = x * x  # x^2
    t *= _K
    t += 1.0
    t *= x
    t *= _S  # sqrt(2/pi) (x + 0.044715 x^3)
    np.tanh(t, out=t)
    t += 1.0
    t *= x
    t *= 0.5  # 0.5 x (1 + tanh(...))
    return t


def gelu_backward(dout, x):
    """d/dx of the tanh-approximate GELU, times ``dout``; recomputes tanh from the saved input.

    With t = tanh(sqrt(2/pi) (x + 0.044715 x^3)):
    d gelu / dx = 0.5 (1 + t) + 0.5 sqrt(2/pi) x (1 - t^2) (1 + 3 * 0.044715 x^2).
    Computed in place in three buffers (the plain expression allocates about ten).
    """
    x2 = x * x  # x^2
    t = x2 * _K
    t += 1.0
    t *= x
    t *= _S
    np.tanh(t, out=t)  # t
    x2 *= 3.0 * _K
    x2 += 1.0
    x2 *= x
    x2 *= 0.5 * _S  # 0.5 sqrt(2/pi) x (1 + 3 K x^2)
    one_minus_t2 = t * t
    np.subtract(1.0, one_minus_t2, out=one_minus_t2)  # 1 - t^2
    x2 *= one_minus_t2
    t += 1.0
    t *= 0.5
    t += x2  # d gelu / dx
    t *= dout
    return t
