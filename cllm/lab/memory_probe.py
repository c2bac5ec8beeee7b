"""Peak memory of a seed-configuration training run, measured in a fresh interpreter.

``python -m cllm.lab.memory_probe STEPS`` trains the seed preset for STEPS float32 steps as the
trainer steps (:class:`cllm.train.TrainingStep`) and prints one JSON line: the resident-set high-water
mark before the model exists (``base``) and after the steps (``peak``), in bytes, from
``/proc/self/status`` (VmHWM) and from ``getrusage`` (ru_maxrss), and the parameter count.
``bench --compare torch`` runs it in a child process, so that the figure is not the parent's.
"""
from __future__ import annotations

import json
import resource
import sys


def high_water_mark():
    """Peak RSS of this process in bytes from VmHWM, or None without /proc.

    ru_maxrss is the same figure, except that Linux carries the parent's RSS at fork time over into a
    child's ru_maxrss; VmHWM starts afresh."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def probe(steps: int) -> dict:
    import numpy as np

    from ..allocator import tune_allocator
    from ..config import PRESETS
    from ..model import Model
    from ..train import TrainingStep

    base, base_ru = high_water_mark(), max_rss()
    preset = PRESETS["seed"]
    cfg, B = preset.model, preset.batch_size
    model = Model(cfg, seed=0)
    tune_allocator()
    step = TrainingStep(model, B, cfg.max_seq_len)  # as the trainer steps; the stores die inside each call
    rng = np.random.default_rng(0)
    shape = (B, cfg.max_seq_len)
    for _ in range(steps):
        step(rng.integers(0, cfg.vocab_size, shape), rng.integers(0, cfg.vocab_size, shape))
    return dict(base=base, peak=high_water_mark(), base_ru=base_ru, peak_ru=max_rss(), params=model.num_params())


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: python -m cllm.lab.memory_probe STEPS")
    print(json.dumps(probe(int(sys.argv[1]))))
