"""``python -m cllm bench``: how fast a training step runs, next to what this machine can do.

In one process it measures (1) the float32 matmul throughput of a 2048 x 2048 product, the
ceiling for everything else, then (2) full float32 training steps (forward, backward, AdamW) of the
seed configuration and the small configuration, reporting medians. Shared machines are noisy, so
only medians and ratios taken in the same run mean anything; nothing here is compared against a
fixed number.
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


def time_training_step(cfg: ModelConfig, B: int, repeats: int, seed=0, workers=None):
    """Median seconds of forward, backward and AdamW over ``repeats`` steps (after one warm-up)."""
    model = Model(cfg, seed=seed)
    step = TrainingStep(model, B, cfg.max_seq_len, workers=workers)
    x, y = random_batch(cfg, B, seed)
    fwd, bwd, upd = [], [], []
    for i in range(repeats + 1):
        _, (f, b, u) = step(x, y)
        if i:  # the first step warms caches and allocators
            fwd.append(f)
            bwd.append(b)
            upd.append(u)
    return dict(forward=float(np.median(fwd)), backward=float(np.median(bwd)), optimizer=float(np.median(upd)),
                step=float(np.median(np.add(np.add(fwd, bwd), upd))), params=model.num_params(),
                workers=step.parallel.workers)


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
    return (f"{cpu}, {os.cpu_count()} cores; numpy {np.__version__}; BLAS threads {threads}; "
            f"OPENBLAS_CORETYPE={core}")


def run_bench(repeats=20, configs=("seed", "small")) -> int:
    """``python -m cllm bench``: the float32 step of each preset in ``configs`` against the matmul peak."""
    tune_allocator()  # as the trainer does (see cllm/allocator.py)
    print(f"machine: {machine_line()}")
    peak = matmul_peak()
    rows = [(name, time_training_step(PRESETS[name].model, PRESETS[name].batch_size, repeats)) for name in configs]
    before, after = peak, matmul_peak()  # the machine's speed drifts (other tenants): take the better
    peak = max(before, after)
    print(f"float32 matmul 2048 x 2048: {peak:.1f} GFLOP/s, the better of before ({before:.1f}) and after "
          f"({after:.1f}) the steps; every ratio below is taken against it")
    print(f"\n{'config':<6} {'params':>11} {'B x T':>7} {'workers':>7} {'forward':>9} {'backward':>9} {'AdamW':>8} {'step':>9} "
          f"{'tokens/s':>9} {'GFLOP/step':>10} {'GFLOP/s':>8} {'of peak':>7}")
    for name, r in rows:
        cfg, B = PRESETS[name].model, PRESETS[name].batch_size
        T = cfg.max_seq_len
        flops = step_flops(cfg, B, T)
        achieved = flops / r["step"] / 1e9
        print(f"{name:<6} {r['params']:>11,} {f'{B}x{T}':>7} {r['workers']:>7} {r['forward'] * 1e3:>7.1f}ms {r['backward'] * 1e3:>7.1f}ms "
              f"{r['optimizer'] * 1e3:>6.1f}ms {r['step'] * 1e3:>7.1f}ms {B * T / r['step']:>9,.0f} "
              f"{flops / 1e9:>10.2f} {achieved:>8.1f} {achieved / peak:>7.0%}")
    print(f"\nmedians of {repeats} float32 training steps (forward + backward + AdamW) after one warm-up step;"
          f" workers: threads that run forward and backward on shares of the batch, chosen as the trainer does")
    return 0
