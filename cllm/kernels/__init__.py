"""Which implementation of the ops runs: the numpy reference (:mod:`cllm.ops`) or fused numba kernels.

    ops = cllm.kernels.ops_for("numba")     # a namespace with every name of cllm.ops
    ops.layernorm_forward(x, w, b)           # the same function, one fused pass per row

``kernels`` is ``"numpy"`` (the ops the notebooks teach; always available), ``"numba"`` (the fused
kernels of ``cllm/kernels/_numba.py``; needs numba) or ``"auto"`` (numba when it imports, else numpy
with a one-line notice). It changes how a step is computed, not what: results agree to rounding
(the equality bounds are in tests/test_kernels.py), checkpoints do not record it, and a run may be
resumed on either path.

numba is imported lazily, the first time a numba namespace is asked for, so ``import cllm`` and a
model on the numpy path never load it. The kernels' thread count follows BLAS's: :func:`set_threads`
holds the count in force (process-wide, like BLAS's; ``cllm.parallel.blas_threads`` sets both, and
before that the count is OPENBLAS_NUM_THREADS or OMP_NUM_THREADS, else one per core), and each kernel
call first sets numba's thread-local count to it, so inside the data-parallel workers (BLAS set to one
thread) each worker's kernels run on its own core and nothing oversubscribes the cores. The threading
layer is a thread-safe one (``omp`` or ``tbb``) unless ``NUMBA_THREADING_LAYER`` says otherwise; where
none is available, :func:`threadsafe` is false and the data-parallel step uses one worker.
"""
from __future__ import annotations

import importlib.util
import sys
import types

from ._threads import set_threads, threads  # noqa: F401 (the kernels' thread count, BLAS's)

KERNELS = ("auto", "numpy", "numba")
INSTALL = "pip install numba"

_state = {"available": None, "noticed": False, "threadsafe": None}
_namespaces = {}


def check(kernels) -> str:
    """``kernels`` itself, or ValueError naming the choices."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(map(repr, KERNELS))}, got {kernels!r}")
    return kernels


def available() -> bool:
    """Whether numba can be imported (imports it, once, when it is installed)."""
    if _state["available"] is None:
        ok = importlib.util.find_spec("numba") is not None
        if ok:
            try:
                import numba  # noqa: F401
            except Exception:  # a broken install (e.g. a numpy it was not built for)
                ok = False
        _state["available"] = ok
    return _state["available"]


def resolve(kernels="auto") -> str:
    """"numpy" or "numba" for a ``kernels`` choice. "auto" without numba prints a one-line notice (once)
    and gives "numpy"; "numba" without numba is a ValueError that says how to install it."""
    check(kernels)
    if kernels == "numpy":
        return "numpy"
    if available():
        return "numba"
    if kernels == "numba":
        raise ValueError(f"kernels='numba' needs numba, which is not installed or does not import: {INSTALL}")
    if not _state["noticed"]:
        _state["noticed"] = True
        print(f"cllm: numba is not available; using the numpy kernels ({INSTALL} for the fused ones)",
              file=sys.stderr)
    return "numpy"


def ops_for(kernels="numpy"):
    """The ops namespace for ``kernels``: :mod:`cllm.ops` itself for numpy, else a namespace holding
    every name of cllm.ops with the fused kernels in place of the ops they implement."""
    name = resolve(kernels)
    if name == "numpy":
        from .. import ops
        return ops
    if name not in _namespaces:
        from .. import ops
        from . import fused
        ns = types.SimpleNamespace(**{k: getattr(ops, k) for k in dir(ops) if not k.startswith("__")})
        for k in fused.OPS:
            setattr(ns, k, getattr(fused, k))
        ns.__name__ = "cllm.kernels.fused"
        _namespaces[name] = ns
    return _namespaces[name]


def optim_kernels(kernels="numpy"):
    """The module with the fused optimizer kernels (:mod:`cllm.kernels.fused`), or None for numpy."""
    if resolve(kernels) == "numpy":
        return None
    from . import fused
    return fused


def threadsafe() -> bool:
    """Whether numba's threading layer accepts parallel launches from several threads at once."""
    if _state["threadsafe"] is None:
        from . import fused
        _state["threadsafe"] = fused.threading_layer() in ("omp", "tbb")
    return _state["threadsafe"]

