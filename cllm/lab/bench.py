"""``python -m cllm bench``: how fast a training step runs, next to what this machine can do.

In one process it measures (1) the float32 matmul throughput of a 2048 x 2048 product, the
ceiling for everything else, then (2) full float32 training steps (forward, backward, AdamW) of the
seed configuration and the small configuration, reporting medians, on both kernel paths (the numpy
reference ops and the fused numba kernels of cllm/kernels) with their steps taken in turns, and (3)
each step's time inside matrix products (the same products, same shapes, timed alone) and outside
them. ``--sweep`` adds tokens/s and fraction of peak over d_model and context length, with the
activation store's size; ``--compile-time`` the kernels' first-use compile time, cold and cached.
Shared machines are noisy, so only medians and ratios taken in the same run mean anything; nothing
here is compared against a fixed number.
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from ..allocator import tune_allocator
from ..config import PRESETS, ModelConfig
from ..model import Model
from ..train import TrainingStep

def matmul_peak(n=2048, repeats=7) -> float:
    """Median GFLOP/s of an (n x n) @ (n x n) float32 product (2 n^3 flops)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / np.median(times) / 1e9


def step_flops(cfg: ModelConfig, B: int, T: int) -> int:
    """Matmul flops of one training step: forward 2 N P (P = weights in matmuls, head included) plus
    attention 4 B T^2 C (scores and weighted sum), backward twice the forward."""
    C, F, L, V = cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.vocab_size
    weights = L * (3 * C * C + C * C + 2 * C * F) + V * C
    forward = 2 * B * T * weights + L * 4 * B * T * T * C
    return 3 * forward


def random_batch(cfg: ModelConfig, B: int, seed=0):
    """A (B, max_seq_len) batch of random token ids and a (B, max_seq_len) batch of targets."""
    rng = np.random.default_rng(seed)
    shape = (B, cfg.max_seq_len)
    return rng.integers(0, cfg.vocab_size, shape), rng.integers(0, cfg.vocab_size, shape)


def time_training_step(cfg: ModelConfig, B: int, repeats: int, seed=0, workers=None, kernels="numpy"):
    """Median seconds of forward, backward and AdamW over ``repeats`` steps (after one warm-up)."""
    return time_paths(cfg, B, repeats, seed, workers, (kernels,))[kernels]


def time_paths(cfg: ModelConfig, B: int, repeats: int, seed=0, workers=None, kernels=("numpy", "numba")):
    """``time_training_step`` for each kernel path, the paths' steps taken in turns (A B A B) so that
    background load falls on each alike: {path: medians}."""
    steps = {}
    if "numba" in kernels:  # compile (or load) the kernels before any step is timed
        from ..kernels import fused
        fused.warmup()
    for k in kernels:
        model = Model(cfg, seed=seed, kernels=k)
        steps[k] = TrainingStep(model, B, cfg.max_seq_len, workers=workers)
    x, y = random_batch(cfg, B, seed)
    times = {k: ([], [], []) for k in kernels}
    for i in range(repeats + 2):
        for k in kernels:
            _, phases = steps[k](x, y)
            if i >= 2:  # two warm-up steps: caches, allocators, the kernels' thread pool
                for lst, dt in zip(times[k], phases):
                    lst.append(dt)
    out = {}
    for k, (fwd, bwd, upd) in times.items():
        out[k] = dict(forward=float(np.median(fwd)), backward=float(np.median(bwd)), optimizer=float(np.median(upd)),
                      step=float(np.median(np.add(np.add(fwd, bwd), upd))), params=steps[k].model.num_params(),
                      workers=steps[k].parallel.workers)
    return out


def gemm_shapes(cfg: ModelConfig, B: int, T: int):
    """The matrix products of one training step as (count, batch, m, k, n): forward y = x W of every
    linear layer, backward dx = dy W^T and dW = x^T dy, the attention's four batched products forward
    (scores, weighted sum) and backward, and the head."""
    C, F, L, V, H = cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.vocab_size, cfg.n_heads
    N, hd = B * T, cfg.d_model // cfg.n_heads
    shapes = []
    for I, O in ((C, 3 * C), (C, C), (C, F), (F, C)):
        shapes += [(L, 1, N, I, O), (L, 1, N, O, I), (L, 1, I, N, O)]  # forward, dx, dW
    shapes += [(1, 1, N, C, V), (1, 1, N, V, C), (1, 1, C, N, V)]  # the head
    # attention per layer: q k^T and p v forward; dv = p^T dy, datt = dy v^T, dq = ds k, dk = ds^T q
    shapes += [(L, B * H, T, hd, T), (L, B * H, T, T, hd), (L, B * H, T, T, hd), (L, B * H, T, hd, T),
               (L, B * H, T, T, hd), (L, B * H, T, T, hd)]
    return shapes


def gemm_time(cfg: ModelConfig, B: int, T: int, repeats=5, dtype=np.float32) -> float:
    """Median seconds of one step's matrix products (``gemm_shapes``) run alone, on all BLAS threads."""
    rng = np.random.default_rng(0)
    ops = []
    for count, batch, m, k, n in gemm_shapes(cfg, B, T):
        shape_a = (batch, m, k) if batch > 1 else (m, k)
        shape_b = (batch, k, n) if batch > 1 else (k, n)
        a = rng.standard_normal(shape_a, dtype=np.float32).astype(dtype)
        b = rng.standard_normal(shape_b, dtype=np.float32).astype(dtype)
        ops.append((count, a, b, np.empty(a.shape[:-1] + (n,), dtype=dtype)))
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        for count, a, b, out in ops:
            for _ in range(count):
                np.matmul(a, b, out=out)
        if i:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def blas_line() -> str:
    """Which BLAS numpy runs and its kernel: threadpoolctl where installed, else OpenBLAS's own
    ``get_corename`` (through ctypes), else numpy's build configuration."""
    try:
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            if info.get("user_api") == "blas":
                return (f"BLAS {info.get('internal_api')} {info.get('version')}, kernel "
                        f"{info.get('architecture')}, {info.get('num_threads')} threads")
    except ImportError:
        pass
    import ctypes
    import re

    try:
        with open("/proc/self/maps") as f:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so[.\d]*)", f.read())))
        for path in paths:
            lib = ctypes.CDLL(path)
            for pre in ("scipy_openblas_", "openblas_", ""):
                for suf in ("64_", ""):
                    fn = getattr(lib, f"{pre}get_corename{suf}", None)
                    if fn is not None:
                        fn.restype = ctypes.c_char_p
                        return f"BLAS OpenBLAS, kernel {fn().decode()} (get_corename)"
    except OSError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"BLAS {blas.get('name')} {blas.get('version')} ({blas.get('openblas configuration', '')})"
    except Exception:  # older numpy: no dict form
        return "BLAS unknown"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads = os.environ.get("OMP_NUM_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS") or "default"
    core = os.environ.get("OPENBLAS_CORETYPE", "auto")
    return (f"{cpu}, {os.cpu_count()} cores; {blas_line()}; numpy {np.__version__}; BLAS threads {threads}; "
            f"OPENBLAS_CORETYPE={core}")


def kernel_paths(kernels="both"):
    """The kernel paths a bench compares: "both" -> numpy and, where numba imports, numba."""
    from ..kernels import available

    if kernels == "both":
        return ("numpy", "numba") if available() else ("numpy",)
    return (kernels,)


def run_bench(repeats=20, configs=("seed", "small"), kernels="both") -> int:
    """``python -m cllm bench``: the float32 step of each preset in ``configs`` against the matmul peak,
    on each kernel path, with the time inside and outside matrix products."""
    tune_allocator()  # as the trainer does (see cllm/allocator.py)
    print(f"machine: {machine_line()}")
    print(f"load average (1, 5, 15 min): {_load_line()}")
    paths = kernel_paths(kernels)
    peak = matmul_peak()
    rows = [(name, time_paths(PRESETS[name].model, PRESETS[name].batch_size, repeats, kernels=paths))
            for name in configs]
    gemm = {name: gemm_time(PRESETS[name].model, PRESETS[name].batch_size, PRESETS[name].seq_len) for name in configs}
    before, after = peak, matmul_peak()  # the machine's speed drifts (other tenants): take the better
    peak = max(before, after)
    print(f"float32 matmul 2048 x 2048: {peak:.1f} GFLOP/s, the better of before ({before:.1f}) and after "
          f"({after:.1f}) the steps; every ratio below is taken against it")
    print(f"\n{'config':<6} {'kernels':<7} {'params':>11} {'B x T':>7} {'workers':>7} {'forward':>9} {'backward':>9} "
          f"{'AdamW':>8} {'step':>9} {'tokens/s':>9} {'GFLOP/s':>8} {'of peak':>7} {'GEMM':>8} {'outside':>8} {'out/in':>6}")
    for name, res in rows:
        cfg, B = PRESETS[name].model, PRESETS[name].batch_size
        T = cfg.max_seq_len
        flops = step_flops(cfg, B, T)
        for k, r in res.items():
            achieved = flops / r["step"] / 1e9
            outside = r["step"] - gemm[name]
            print(f"{name:<6} {k:<7} {r['params']:>11,} {f'{B}x{T}':>7} {r['workers']:>7} {r['forward'] * 1e3:>7.1f}ms "
                  f"{r['backward'] * 1e3:>7.1f}ms {r['optimizer'] * 1e3:>6.1f}ms {r['step'] * 1e3:>7.1f}ms "
                  f"{B * T / r['step']:>9,.0f} {achieved:>8.1f} {achieved / peak:>7.0%} {gemm[name] * 1e3:>6.1f}ms "
                  f"{outside * 1e3:>6.1f}ms {outside / gemm[name]:>6.0%}")
        if len(res) == 2:
            print(f"{'':<6} numba / numpy step time: {res['numba']['step'] / res['numpy']['step']:.3f}")
    print(f"\nmedians of {repeats} float32 training steps (forward + backward + AdamW) after two warm-up steps, the "
          f"kernel paths in turns; workers: threads that run forward and backward on shares of the batch, chosen as "
          f"the trainer does; GEMM: the step's matrix products, the same shapes timed alone on all BLAS threads; "
          f"outside: step minus GEMM")
    return 0


def _load_line() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux/macOS
        return "unknown"


SWEEP_D = (128, 256, 512, 1024)
SWEEP_T = (64, 256, 1024)


def sweep(repeats=3, kernels="both", tokens=2048) -> int:
    """``bench --sweep``: tokens/s and fraction of peak as the work grows, d_model 128..1024 (context 64)
    and context 64..1024 (d_model 256), ``tokens`` tokens per step, 2 layers, heads of 64, d_ff 4 d_model,
    with the activation store's size (its B H T^2 attention buffers grow with the context squared)."""
    from ..activations import activation_bytes

    tune_allocator()
    print(f"machine: {machine_line()}")
    print(f"load average (1, 5, 15 min): {_load_line()}")
    paths = kernel_paths(kernels)
    peak = matmul_peak()
    print(f"float32 matmul 2048 x 2048: {peak:.1f} GFLOP/s")
    grid = [(d, 64) for d in SWEEP_D] + [(256, t) for t in SWEEP_T if t != 64]
    print(f"\n{'d_model':>7} {'context':>7} {'B':>3} {'params':>11} {'act. store':>10} "
          + " ".join(f"{k + ' tok/s':>13} {'of peak':>7}" for k in paths))
    for d, T in grid:
        B = max(1, tokens // T)
        cfg = ModelConfig(vocab_size=65, d_model=d, n_layers=2, n_heads=max(1, d // 64), d_ff=4 * d, max_seq_len=T)
        res = time_paths(cfg, B, repeats, kernels=paths)
        flops = step_flops(cfg, B, T)
        acts = activation_bytes(B, T, d, cfg.n_heads, cfg.n_layers, cfg.vocab_size, cfg.d_ff)
        cells = " ".join(f"{B * T / res[k]['step']:>13,.0f} {flops / res[k]['step'] / 1e9 / peak:>7.0%}" for k in paths)
        print(f"{d:>7} {T:>7} {B:>3} {res[paths[0]]['params']:>11,} {acts / 2**20:>7.1f}MiB {cells}")
    print(f"\nmedians of {repeats} float32 training steps after two warm-up steps; 2 layers, heads of 64, vocabulary 65")
    return 0


def compile_times() -> int:
    """``bench --compile-time``: the kernels' first use (every float32 kernel compiled or loaded), in
    fresh interpreters: cold (an empty NUMBA_CACHE_DIR) and then cached (the same folder again)."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    code = "from cllm.kernels import fused; print(fused.warmup(('float32',)))"
    print(f"machine: {machine_line()}")
    print(f"load average (1, 5, 15 min): {_load_line()}")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache,
                   PYTHONPATH=os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        for label in ("cold (empty cache)", "cached", "cached"):
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            total = time.perf_counter() - t
            if proc.returncode != 0:
                print(f"the compile run failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
                return 1
            print(f"{label:<20} kernels ready in {float(proc.stdout.split()[-1]):6.2f} s "
                  f"(the interpreter, numba's import and cllm's: {total:6.2f} s in all)")
    return 0
