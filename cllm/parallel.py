"""Data parallelism on threads: one batch split by rows, every share's forward and backward at once.

Why: numpy's matrix products use every core (through BLAS), but everything between them (LayerNorm,
GELU, softmax, the attention backward, the cross-entropy) runs on one core, and each matrix product
of a small model is too short for BLAS to split well. On a 2-core machine the second core idles for
a large part of a step. Here the batch's rows are dealt to ``workers`` threads; each thread runs the
ordinary :meth:`Model.forward` and :meth:`Model.backward` on its share with BLAS set to one thread,
so all of the step's work, the elementwise part included, runs on every core. numpy releases the
GIL inside its ufuncs and BLAS calls, so the threads overlap everywhere except in the Python glue.

The mathematics does not change. With shares of n_i rows out of N, the batch's mean loss is
``sum_i (n_i / N) loss_i``; each worker backpropagates ``n_i / N`` times its own loss
(``Model.backward(scale=...)``), so the full gradient is the plain sum of the workers' gradients.
Worker 0 writes into the caller's gradient buffers, the others into buffers of their own, which
:meth:`DataParallel.backward` then adds in (chunked, on the same threads). Results differ from the
one-thread step only by float rounding (the order of the sums), and are deterministic.

Dropout: each worker draws its masks from its own generator, seeded from the caller's generator, so
a fixed generator still fixes every mask (but the masks differ from a one-worker run's).

The BLAS thread count is set through OpenBLAS's own ``openblas_set_num_threads`` (numpy's wheels
bundle OpenBLAS). Where that library cannot be found (another BLAS), the parallel step would
oversubscribe the cores, so :class:`DataParallel` falls back to one worker.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import glob
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from ._validate import check_int
from .kernels import set_threads as set_kernel_threads
from .ops.cross_entropy import IGNORE_INDEX
from .optim import DEFAULT_CHUNK, _chunks

# ---------------------------------------------------------------------------------------- BLAS threads
_BLAS = None  # (set, get) ctypes functions once looked up; False if there are none
_BLAS_LOCK = threading.Lock()


def _find_openblas():
    """The set/get thread-count functions of the OpenBLAS numpy has loaded, or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so[.\d]*)", f.read())))
    except OSError:  # no /proc (not Linux): look next to numpy instead
        root = os.path.dirname(os.path.dirname(np.__file__))
        paths = sorted(glob.glob(os.path.join(root, "numpy*libs", "*openblas*")))
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        # scipy-openblas (numpy's wheels) prefixes its symbols; a system OpenBLAS does not
        for name in ("scipy_openblas_{}64_", "openblas_{}64_", "scipy_openblas_{}", "openblas_{}"):
            setter = getattr(lib, name.format("set_num_threads"), None)
            getter = getattr(lib, name.format("get_num_threads"), None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return None


def blas_controls():
    """(set_num_threads, get_num_threads) of numpy's OpenBLAS, or None where it cannot be found."""
    global _BLAS
    if _BLAS is None:
        np.ones((2, 2)) @ np.ones((2, 2))  # make sure numpy's BLAS is loaded
        _BLAS = _find_openblas() or False
    return _BLAS or None


@contextlib.contextmanager
def blas_threads(n: int):
    """Within the block, BLAS uses ``n`` threads (process-wide), and so do the fused kernels
    (:func:`cllm.kernels.set_threads`); the previous counts are restored after. BLAS is left alone
    where it cannot be controlled."""
    controls = blas_controls()
    if controls is None:
        yield
        return
    set_n, get_n = controls
    with _BLAS_LOCK:
        before = get_n()
        set_n(n)
        kernels_before = set_kernel_threads(n)
    try:
        yield
    finally:
        with _BLAS_LOCK:
            set_n(before)
            set_kernel_threads(kernels_before)


# ------------------------------------------------------------------------------------------- the step
# Fewest rows (tokens) per worker for the split to pay. Each worker reads every weight matrix and writes
# a full set of weight gradients, which are then added up: that traffic grows with the number of workers
# while the arithmetic does not. Measured on 2 cores (forward + backward, one worker vs two): 768 tokens,
# d_model 128: 1.21x faster; 512 tokens, d_model 384 or 512: 1.12x; 128 tokens, d_model 512 (the seed
# configuration): 0.98x, i.e. slower.
MIN_TOKENS_PER_WORKER = 256


def auto_workers(batch_size: int, seq_len: int, cores: Optional[int] = None) -> int:
    """How many workers the trainer uses when ``TrainConfig.workers`` is None: one per
    ``MIN_TOKENS_PER_WORKER`` tokens of the batch, at most one per core and one per row, at least one."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(cores, batch_size, (batch_size * seq_len) // MIN_TOKENS_PER_WORKER))


def shares(rows: int, workers: int) -> list:
    """Contiguous row slices, as even as possible: shares(12, 2) -> [0:6, 6:12]; shares(5, 2) -> [0:2, 2:5].
    Never more slices than rows."""
    n = max(1, min(workers, rows))
    bounds = [rows * i // n for i in range(n + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(n)]


class DataParallel:
    """Forward and backward of ``model`` on ``workers`` threads, each on a share of the batch's rows.

    ``forward(idx, targets)`` returns ``(loss, parts)``: the batch's mean loss and what ``backward``
    needs (one activation store per share with its weight). ``backward(parts, out)`` fills the gradient
    dict ``out`` (e.g. :meth:`Model.zeros_like_params`) with the batch's gradient. With one worker (or
    where BLAS threads cannot be controlled) both are the plain single-thread calls.
    """

    def __init__(self, model, workers: int = 2):
        check_int("workers", workers, 1)
        self.model = model
        self.workers = workers if blas_controls() is not None else 1
        if getattr(model, "kernels", "numpy") == "numba":
            from .kernels import threadsafe
            if not threadsafe():  # numba's workqueue layer must not be entered from two threads at once
                self.workers = 1
        self._pool: Optional[ThreadPoolExecutor] = None
        self._buffers = []  # gradient buffers of workers 1.. (worker 0 writes into the caller's)

    def _map(self, fn, items):
        """fn(item) for each item, one per thread (the first on the calling thread), BLAS single-threaded."""
        if len(items) == 1:
            return [fn(items[0])]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers - 1, thread_name_prefix="cllm-worker")
        with blas_threads(1):
            # in copies of the caller's context: the caller's np.errstate holds on the workers too
            jobs = [self._pool.submit(contextvars.copy_context().run, fn, item) for item in items[1:]]
            first = fn(items[0])
            return [first] + [job.result() for job in jobs]  # re-raises a worker's exception

    def forward(self, idx, targets, train=True, rng=None):
        """The mean loss over all rows and the per-share stores: ``(loss, parts)``."""
        idx, targets = np.asarray(idx), np.asarray(targets)
        if idx.ndim != 2 or self.workers == 1 or idx.shape[0] < 2:
            _, loss, acts = self.model.forward(idx, targets, train=train, rng=rng)
            return loss, [(acts, 1.0)]
        rows = idx.shape[0]
        parts = shares(rows, self.workers)
        rng = rng if rng is not None else self.model.dropout_rng
        if train and self.model.cfg.dropout > 0:  # one generator per share, seeded from the caller's
            rngs = [np.random.default_rng(s) for s in rng.integers(0, 2**63, size=len(parts))]
        else:
            rngs = [rng] * len(parts)  # never drawn from

        def run(i):
            s = parts[i]
            return self.model.forward(idx[s], targets[s], train=train, rng=rngs[i])

        outs = self._map(run, list(range(len(parts))))
        # the batch's mean is over its scored targets (IGNORE_INDEX ones left out): weight shares by those
        counted = [int(np.count_nonzero(targets[s] != IGNORE_INDEX)) for s in parts]
        total = sum(counted)
        weights = [c / total for c in counted] if total else [(s.stop - s.start) / rows for s in parts]
        loss = float(sum(w * o[1] for w, o in zip(weights, outs)))
        return loss, [(o[2], w) for o, w in zip(outs, weights)]

    def backward(self, parts, out):
        """Gradients of the batch's mean loss into ``out`` (returned): the weighted workers' gradients summed."""
        model = self.model
        if len(parts) == 1:
            acts, w = parts[0]
            return model.backward(acts, out=out, scale=w)
        while len(self._buffers) < len(parts) - 1:
            self._buffers.append(model.zeros_like_params())
        targets = [out] + self._buffers[: len(parts) - 1]

        def run(i):
            acts, w = parts[i]
            model.backward(acts, out=targets[i], scale=w)

        self._map(run, list(range(len(parts))))
        # out += the other workers' gradients, in cache-sized chunks dealt to the threads
        work = [(name, s) for name, g in out.items() for s in _chunks(g.size, DEFAULT_CHUNK)]
        flat = [{name: g.reshape(-1) for name, g in t.items()} for t in targets]

        def reduce(k):
            for name, s in work[k :: len(parts)]:
                acc = flat[0][name][s]
                for other in flat[1:]:
                    acc += other[name][s]

        self._map(reduce, list(range(len(parts))))
        return out

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
