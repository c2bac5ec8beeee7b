"""Continue training a cllm model in PyTorch with DistributedDataParallel (DDP), under torchrun.

    python -m cllm export runs/x --format hf --out export/x
    torchrun --nproc_per_node=2 examples/continue_in_pytorch.py export/x --data corpus.txt --steps 100 \
        --out export/x-more
    python -m cllm import export/x-more --out runs/x-more          # and back into cllm

This is what to do when one machine is not enough: an existing distributed engine, not a home-made
one. torchrun starts one process per rank and gives each its RANK, WORLD_SIZE and the rendezvous
address; every process here

1. loads the export with transformers (``GPT2LMHeadModel.from_pretrained``, eager attention, float32)
   and its tokenizer with ``AutoTokenizer`` (the ids are cllm's),
2. wraps the model in ``DistributedDataParallel`` (gloo on the CPU; nccl with ``--backend nccl`` on
   GPUs, one per rank),
3. takes its share of each global batch: all ranks draw the same ``world_size x batch_size`` windows of
   the tokenised text from one seeded generator and rank r keeps rows r*B .. r*B+B-1, so the global
   batch is the same for any number of ranks,
4. steps AdamW; DDP averages the gradients across ranks during ``backward``.

Rank 0 prints the loss of each step (the mean over all ranks' rows: the same number cllm's
``Model.loss`` gives on the global batch), writes ``--log-json`` (JSON: the losses and the first global
batch), and at the end saves the model with ``save_pretrained`` into ``--out`` with the export's
tokenizer files beside it, which ``cllm import`` reads back.

On several machines: the same command on each, with ``--nnodes N --node-rank i --rdzv-endpoint
HOST:PORT`` (see ``torchrun --help``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export_dir", help="a folder written by `python -m cllm export ... --format hf`")
    p.add_argument("--data", default=None, help="a UTF-8 text file (default: cllm's built-in corpus)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4, help="rows per rank")
    p.add_argument("--seq-len", type=int, default=None, help="default: min(64, n_positions)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    p.add_argument("--log-json", default=None, help="rank 0 writes the losses and the first global batch here (JSON)")
    p.add_argument("--out", default=None, help="save_pretrained folder for the trained model (rank 0)")
    return p.parse_args()


def load_text(path):
    if path is not None:
        return Path(path).read_text(encoding="utf-8")
    from cllm.data import builtin_corpus  # the corpus cllm trains on by default

    return builtin_corpus()


def main():
    args = parse_args()
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if args.backend == "nccl" else "cpu")
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(args.export_dir, attn_implementation="eager",
                                            dtype=torch.float32).to(device)
    model.train()  # an export's dropouts are 0, so this changes nothing but the mode
    tok = AutoTokenizer.from_pretrained(args.export_dir)
    ids = np.asarray(tok(load_text(args.data))["input_ids"], dtype=np.int64)  # (N,)
    T = args.seq_len or min(64, model.config.n_positions)
    if len(ids) < T + 1:
        raise SystemExit(f"{len(ids)} tokens are too few for --seq-len {T}")
    ddp = DDP(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed)  # the same on every rank: every rank draws the global batch
    B = args.batch_size
    losses, first = [], None
    for step in range(args.steps):
        starts = rng.integers(0, len(ids) - T, world * B)  # (world*B,) window starts, global batch
        x = np.stack([ids[s:s + T] for s in starts])  # (world*B, T)
        y = np.stack([ids[s + 1:s + T + 1] for s in starts])  # next tokens
        if first is None:
            first = {"x": x.tolist(), "y": y.tolist()}
        xr = torch.from_numpy(x[rank * B:(rank + 1) * B]).to(device)  # this rank's rows (B, T)
        yr = torch.from_numpy(y[rank * B:(rank + 1) * B]).to(device)
        logits = ddp(input_ids=xr).logits  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yr.reshape(-1))  # mean over B*T
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP all-reduces (averages) the gradients here
        opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)  # sum over ranks
        mean = mean.item() / world  # equal rows per rank: the mean over the global batch
        losses.append(mean)
        if rank == 0:
            print(f"step {step + 1:>5}/{args.steps}: loss {mean:.4f}", flush=True)
    if rank == 0:
        if args.log_json:
            Path(args.log_json).write_text(json.dumps({"world_size": world, "losses": losses, "first_batch": first}))
        if args.out:
            model.save_pretrained(args.out)
            for name in TOKENIZER_FILES:
                if (Path(args.export_dir) / name).is_file():
                    shutil.copy(Path(args.export_dir) / name, Path(args.out) / name)
            print(f"saved {args.out}")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
