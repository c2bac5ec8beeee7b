"""Operations of the model, one module each, as forward/backward pairs of pure functions.

Conventions shared by every op:

* ``*_forward`` returns its output and whatever ``*_backward`` needs (nothing more);
* ``*_backward`` takes the gradient of the loss with respect to the output (``dout``) and the saved
  values, and returns gradients with respect to every input and parameter, in the order of the
  forward's arguments;
* float32 and float64 both work; outputs keep the dtype of the inputs;
* shapes are written beside the lines that change them: B batch, T time, C channels, H heads,
  hd = C / H, F the MLP width, V the vocabulary, N = B * T rows.
"""
from .attention import attention_backward, attention_forward, causal_mask
from .cross_entropy import IGNORE_INDEX, cross_entropy_backward, cross_entropy_forward
from .dropout import dropout_backward, dropout_forward
from .embedding import embedding_backward, embedding_forward, position_backward, position_forward
from .activation import MLP_ACTIVATIONS, activation_backward, activation_forward
from .gelu import gelu_backward, gelu_forward
from .layernorm import LN_EPS, layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .relu import relu_backward, relu_forward
from .residual import residual_backward, residual_forward
from .softmax import log_softmax, softmax_backward, softmax_forward
from .tanh import tanh_backward, tanh_forward

__all__ = [
    "IGNORE_INDEX", "LN_EPS", "MLP_ACTIVATIONS",
    "activation_backward", "activation_forward",
    "attention_backward", "attention_forward", "causal_mask",
    "cross_entropy_backward", "cross_entropy_forward",
    "dropout_backward", "dropout_forward",
    "embedding_backward", "embedding_forward", "position_backward", "position_forward",
    "gelu_backward", "gelu_forward", "tanh_backward", "tanh_forward",
    "layernorm_backward", "layernorm_forward",
    "linear_backward", "linear_forward",
    "log_softmax", "relu_backward", "relu_forward", "residual_backward", "residual_forward",
    "softmax_backward", "softmax_forward",
]
