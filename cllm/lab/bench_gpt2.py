"""GPT-2 124M in plain numpy: how fast it runs and how much memory fine-tuning takes.

``python -m cllm.lab.bench_gpt2`` builds a random-weight model of exactly the shape of
openai-community/gpt2 (12 layers, 12 heads, d_model 768, d_ff 3072, vocabulary 50257, context 1024,
tied head: 124,439,808 parameters, float32) and measures

* forward (inference, no store kept for a backward pass) tokens/s at batch 4 x 128 and 1 x 1024,
* greedy generation with the KV cache: tokens/s of the incremental steps after a 32-token prompt,
* one fine-tuning step (forward, backward, AdamW, as the trainer steps: ``cllm.train.TrainingStep``)
  at batch 4 x 128: its time, and the peak resident memory of a fresh interpreter that builds the
  model and takes two such steps (``VmHWM``, as ``cllm.lab.memory_probe`` measures it).

Nothing is downloaded; the real weights run the same code at the same speed (``cllm.load_pretrained``).
Timings are medians of ``--repeats`` runs after a warm-up; on a shared machine look at the load
average printed beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from ..config import ModelConfig

GPT2_124M = ModelConfig(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=1024,
                        dtype="float32", activation="gelu", tie_weights=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def fine_tune_child(B: int, T: int, steps: int = 2) -> dict:
    """In this (fresh) process: build the model, take ``steps`` training steps; times and peak RSS."""
    from ..allocator import tune_allocator
    from ..model import Model
    from ..train import TrainingStep
    from .memory_probe import high_water_mark

    base = high_water_mark()
    model = Model(GPT2_124M, seed=0)
    tune_allocator()
    step = TrainingStep(model, B, T)
    rng = np.random.default_rng(0)
    times, losses = [], []
    for _ in range(steps):
        x, y = rng.integers(0, GPT2_124M.vocab_size, (2, B, T))
        t = time.perf_counter()
        loss, phases = step(x, y)
        times.append((time.perf_counter() - t, phases))
        losses.append(float(loss))
    return dict(base=base, peak=high_water_mark(), params=model.num_params(), times=times, losses=losses)


def run(repeats: int = 3, new_tokens: int = 64) -> dict:
    from ..generate import KVCache, forward_cached, generate
    from ..model import Model

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    t = time.perf_counter()
    model = Model(GPT2_124M, seed=0)
    print(f"model: GPT-2 124M shape, {model.num_params():,} parameters, float32, random weights "
          f"(built in {time.perf_counter() - t:.1f} s)", flush=True)
    rng = np.random.default_rng(0)
    out = {"cpu": cpu_model(), "cores": os.cpu_count(), "params": model.num_params()}
    for B, T in ((4, 128), (1, 1024)):
        idx = rng.integers(0, GPT2_124M.vocab_size, (B, T))
        s = _median_time(lambda: model.forward(idx, train=False), repeats)
        out[f"forward_{B}x{T}_tokens_per_s"] = B * T / s
        print(f"forward {B} x {T}: {s:.3f} s, {B * T / s:,.0f} tokens/s", flush=True)
    prompt = rng.integers(0, GPT2_124M.vocab_size, (1, 32))

    def incremental():
        cache = KVCache(model, 1)
        forward_cached(model, prompt, cache)  # fill (not timed below)
        nxt = prompt[:, -1:]
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            logits = forward_cached(model, nxt, cache)[:, -1]  # (1, V)
            nxt = logits.argmax(-1)[:, None]
        return time.perf_counter() - t0

    incremental()
    s = float(np.median([incremental() for _ in range(repeats)]))
    out["kv_generation_tokens_per_s"] = new_tokens / s
    t0 = time.perf_counter()
    generate(model, prompt[0], new_tokens, temperature=0.0)
    whole = time.perf_counter() - t0
    print(f"generation with the KV cache: {new_tokens / s:,.1f} tokens/s over {new_tokens} incremental steps "
          f"after a 32-token prompt ({whole:.2f} s for generate(..., {new_tokens}) including the prompt)", flush=True)
    del model
    cmd = [sys.executable, "-m", "cllm.lab.bench_gpt2", "--child", "4", "128"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if child.returncode != 0:
        print(child.stderr.strip().splitlines()[-1] if child.stderr else "the fine-tuning child failed")
        return out
    r = json.loads(child.stdout.strip().splitlines()[-1])
    (total, (f, b, u)) = r["times"][-1]
    out.update(step_s=total, step_phases_s=[f, b, u], peak_rss_bytes=r["peak"], base_rss_bytes=r["base"])
    P = r["params"]
    print(f"fine-tuning step at 4 x 128 (forward, backward, AdamW): {total:.2f} s "
          f"(forward {f:.2f}, backward {b:.2f}, AdamW {u:.2f}; first step {r['times'][0][0]:.2f} s), "
          f"{512 / total:,.0f} tokens/s", flush=True)
    print(f"peak resident memory of that process: {r['peak'] / 2**30:.2f} GiB (interpreter alone "
          f"{r['base'] / 2**30:.2f} GiB; parameters + gradients + two AdamW moments = {16 * P / 2**30:.2f} GiB)",
          flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cllm.lab.bench_gpt2", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--json", default=None, help="also write the numbers here")
    p.add_argument("--child", nargs=2, type=int, metavar=("B", "T"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(fine_tune_child(*args.child)))
        return 0
    out = run(args.repeats, args.new_tokens)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
