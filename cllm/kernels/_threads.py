"""The fused kernels' thread count, kept beside BLAS's (see :mod:`cllm.kernels`). No numba here."""
import os

_threads = [None]  # the count set by set_threads, None: the default


def set_threads(n):
    """Set the kernels' thread count (process-wide; None: the default); return the previous setting."""
    previous = _threads[0]
    _threads[0] = n
    return previous


def threads() -> int:
    """The kernels' thread count in force: the last :func:`set_threads`, else OPENBLAS_NUM_THREADS or
    OMP_NUM_THREADS as BLAS reads them, else the number of cores."""
    n = _threads[0]
    if n is None:
        env = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
        n = int(env) if env and env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)
    return n
