"""Write the shipped model (``cllm/pretrained/main_job``) from a finished run of the main job.

    python -m cllm train --out runs/main-job          # the main job, all defaults (about 2 min)
    python -m cllm.lab.ship_model runs/main-job       # -> cllm/pretrained/main_job (float16)

The record keeps the command, the run's own final validation loss (float32 weights, measured by the
trainer) and the validation loss of the float16 weights as they are shipped (measured here, on the
whole validation split), which is what ``tests/test_pretrained.py`` reproduces.
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np


def ship(run_dir, out, command="python -m cllm train", dtype="float16") -> dict:
    from ..checkpoint import load_checkpoint, save_weights
    from ..data import CORPUS_NAME, CORPUS_SHA256
    from ..pretrained import load
    from .bench import machine_line

    ck = load_checkpoint(run_dir)
    hist = ck.trainer_state["history"]
    record = {
        "command": command,
        "step": ck.step,
        "corpus": CORPUS_NAME,
        "corpus_sha256": CORPUS_SHA256,
        "train_val_loss": hist["val_loss"][-1],  # the trainer's, float32 weights
        "val_loss_curve": {"step": hist["val_step"], "val_loss": hist["val_loss"]},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": machine_line(),
        "written": time.strftime("%Y-%m-%d"),
    }
    out = Path(out)
    tmp = out.with_name(out.name + ".unmeasured")
    save_weights(tmp, ck.params, ck.model_cfg, ck.train_cfg, ck.tokenizer, record, dtype=dtype)
    try:
        shipped = load(tmp)
        val = shipped.validation_loss()
        ids = shipped.validation_ids()
        record["val_loss"] = val  # the shipped (rounded) weights in float32 arithmetic, all windows
        record["val_windows"] = len(ids) // ck.model_cfg["max_seq_len"]
        record["val_bits_per_byte"] = val / (shipped.tokenizer.num_bytes(ids) / len(ids)) / math.log(2)
        save_weights(out, ck.params, ck.model_cfg, ck.train_cfg, ck.tokenizer, record, dtype=dtype)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cllm.lab.ship_model", description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "pretrained" / "main_job"))
    p.add_argument("--command", default="python -m cllm train")
    args = p.parse_args(argv)
    if Path(args.out).exists():
        print(f"ship_model: error: {args.out} exists; remove it first", file=sys.stderr)
        return 2
    rec = ship(args.run_dir, args.out, args.command)
    print(f"wrote {args.out}: step {rec['step']}, validation loss {rec['train_val_loss']:.4f} (float32, trainer) "
          f"-> {rec['val_loss']:.4f} (shipped float16 weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
