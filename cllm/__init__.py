"""cllm: a small GPT-style language model in numpy, with hand-written forward and backward passes.

Importing the package is cheap: submodules (the model, the trainer, the lattice) load on first use, and
nothing is computed at import time.
"""
from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ModelConfig": "cllm.config",
    "TrainConfig": "cllm.config",
    "Model": "cllm.model",
    "ActivationStore": "cllm.activations",
    "gradcheck": "cllm.gradcheck",
    "CharTokenizer": "cllm.tokenizer",
    "WordTokenizer": "cllm.tokenizer",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cllm' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
