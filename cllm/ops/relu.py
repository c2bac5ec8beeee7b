"""ReLU as the MLP activation (the choice of Nanda et al.'s modular-addition transformer), forward and
backward."""
import numpy as np


def relu_forward(x):
    """max(x, 0), elementwise."""
    return np.maximum(x, 0)


def relu_backward(dout, x):
    """d relu(x) / dx = 1 where x > 0, else 0 (the subgradient 0 at x = 0), times ``dout``."""
    return np.where(x > 0, dout, 0).astype(dout.dtype, copy=False)
