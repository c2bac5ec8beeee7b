"""Time one AdamW step on the seed configuration's parameters: plain whole-array numpy vs. chunked.

The seed preset (``cllm.config.PRESETS["seed"]``, the original C project): vocab 611, d_model 512,
6 layers, d_ff 2048, seq 32, tied head -> 19,244,544 parameters.

    python -m cllm.lab.bench_optim                 # plain vs. chunked (default chunk), median ms
    python -m cllm.lab.bench_optim --chunks        # also sweep chunk sizes
    python -m cllm.lab.bench_optim --dtype float64 --repeats 10 --threads 2 4 8

Both versions compute the same update (cllm's in the sums form, see cllm.optim.AdamW; compared after the
timed steps).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from ..config import PRESETS
from ..model import param_shapes
from ..optim import DEFAULT_CHUNK, AdamW, adamw_reference, default_decay

SEED_CONFIG = PRESETS["seed"].model


def make(dtype, seed=0):
    rng = np.random.default_rng(seed)
    shapes = param_shapes(SEED_CONFIG)
    params = {k: (0.02 * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}
    grads = {k: (1e-3 * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}
    return params, grads


class PlainAdamW:
    """The whole-array version: ``adamw_reference`` per tensor (temporaries for every operator)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1):
        self.params, self.lr, self.betas, self.eps, self.wd = params, lr, betas, eps, weight_decay
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}
        self.t = 0

    def step(self, grads):
        self.t += 1
        for k, p in self.params.items():
            wd = self.wd if default_decay(k, p) else 0.0
            adamw_reference(p, grads[k], self.m[k], self.v[k], self.t, self.lr, *self.betas, self.eps, wd)


def time_round_robin(opts, grads, repeats, warmup=2):
    """Median and min step time (ms) per optimizer, timing them in turns so that background load
    on the machine affects every variant alike."""
    for opt in opts.values():
        for _ in range(warmup):  # first touches of the state pages, caches
            opt.step(grads)
    times = {name: [] for name in opts}
    for _ in range(repeats):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step(grads)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--chunks", action="store_true", help="sweep chunk sizes as well")
    ap.add_argument("--threads", type=int, nargs="*", default=[2, 4],
                    help="also time the chunked version with these thread counts (default: 2 4)")
    args = ap.parse_args(argv)

    params, grads = make(args.dtype)
    n = sum(p.size for p in params.values())
    print(f"AdamW step, {n:,} {args.dtype} parameters in {len(params)} tensors, median (min) of "
          f"{args.repeats} steps, numpy {np.__version__}, {os.cpu_count()} CPUs")

    copy = lambda: {k: q.copy() for k, q in params.items()}  # noqa: E731
    hyper = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    opts = {"plain whole-array": PlainAdamW(copy(), **hyper),
            f"chunked {DEFAULT_CHUNK:,} (default)": AdamW(copy(), **hyper)}
    if args.chunks:
        for c in (1 << 12, 1 << 14, 1 << 15, 1 << 17, 1 << 18, 1 << 20):
            opts[f"chunked {c:,}"] = AdamW(copy(), chunk_size=c, **hyper)
    for t in args.threads:
        opts[f"chunked {DEFAULT_CHUNK:,}, {t} threads"] = AdamW(copy(), threads=t, **hyper)

    results = time_round_robin(opts, grads, args.repeats)
    base = results["plain whole-array"][0]
    for name, (med, lo) in results.items():
        print(f"  {name:<32s} {med:7.1f} ms  (min {lo:6.1f})  x{base / med:.2f}")

    plain = opts["plain whole-array"].params
    same = all(np.allclose(o.params[k], plain[k], rtol=1e-5, atol=1e-7) for o in opts.values() for k in plain)
    print(f"  all variants equal to plain (to float rounding: rtol 1e-5) after {args.repeats + 2} steps: {same}")


if __name__ == "__main__":
    main()
