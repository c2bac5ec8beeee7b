"""The MLP's activation function, chosen by name (``ModelConfig.activation``): one table, one dispatch.

Not to be confused with the activation *store* (:mod:`cllm.activations`), which holds the tensors the
forward pass saves for the backward pass. Adding an activation function: a module with its
forward/backward pair, and one entry in ``MLP_ACTIVATIONS``; ``ModelConfig`` accepts every name here.
"""
from .gelu import gelu_backward, gelu_forward
from .relu import relu_backward, relu_forward
from .tanh import tanh_backward, tanh_forward

MLP_ACTIVATIONS = {
    "gelu": (gelu_forward, gelu_backward),
    "tanh": (tanh_forward, tanh_backward),
    "relu": (relu_forward, relu_backward),
}


def activation_forward(x, name="gelu"):
    """Apply the MLP activation called ``name`` (a key of ``MLP_ACTIVATIONS``)."""
    return MLP_ACTIVATIONS[name][0](x)


def activation_backward(dout, x, name="gelu"):
    """Backward of :func:`activation_forward` from its saved input ``x``."""
    return MLP_ACTIVATIONS[name][1](dout, x)
