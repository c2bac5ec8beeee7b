"""cllm: a small GPT-style language model in numpy, with hand-written forward and backward passes.

Importing the package is cheap: submodules (the model, the trainer, the lattice) load on first use, and
nothing is computed at import time.
"""
import os
from importlib import import_module

# OpenBLAS keeps its worker threads spinning for about 2^28 cycles (~0.1 s) after each matrix product,
# waiting for the next one. Between the products of a training step numpy does elementwise work
# (softmax, GELU, AdamW) that then has one core fewer: measured on 2 cores, the seed configuration's
# step takes 141 ms with the default and 117 ms with a 2^10-cycle timeout (AdamW alone 39 -> 24 ms).
# It only takes effect if numpy has not been imported yet, and a value the user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "10")

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ModelConfig": "cllm.config",
    "TrainConfig": "cllm.config",
    "Model": "cllm.model",
    "ActivationStore": "cllm.activations",
    "gradcheck": "cllm.gradcheck",  # the module itself, callable as the function (see gradcheck.py)
    "CharTokenizer": "cllm.tokenizer",
    "WordTokenizer": "cllm.tokenizer",
    "BPETokenizer": "cllm.tokenizer",
    "load_pretrained": "cllm.interop",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cllm' has no attribute {name!r}")
    value = import_module(module) if module == f"cllm.{name}" else getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
