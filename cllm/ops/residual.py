"""Residual connection: out = x + f(x). The gradient reaches both branches unchanged."""


def residual_forward(x, fx):
    """Add the branch output ``fx`` to the stream ``x`` (same shapes)."""
    return x + fx


def residual_backward(dout):
    """Return (dx, dfx): the sum copies its gradient to both summands."""
    return dout, dout
