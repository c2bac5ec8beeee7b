"""A trained model shipped with the package: the main job's weights, so that every reader can see
what a trained character model writes without training one first.

``main_job/`` holds the weights of ``python -m cllm train`` (all defaults: the small configuration,
2,000 steps, seed 1337, on the built-in corpus) in float16 (about 1.6 MB), with its configurations,
tokenizer and a record of the command, the machine and the losses it measured (``record.json``). It
was written by ``python -m cllm.lab.ship_model RUN_DIR`` from that run's last checkpoint.

    from cllm import pretrained
    shipped = pretrained.load()          # .model (float32 Model), .tokenizer, .record
    shipped.validation_loss()            # recomputed here: the record's "val_loss" to about 1e-5
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

MAIN_JOB = Path(__file__).resolve().parent / "main_job"


@dataclass
class Pretrained:
    model: object       # cllm.Model in the configuration's dtype (float32)
    tokenizer: object   # the run's tokenizer
    record: dict        # how the weights were made and what they measured
    train_cfg: Optional[dict] = None

    def validation_ids(self) -> np.ndarray:
        """The validation split the run measured itself on: the last 10% of the built-in corpus."""
        from ..data import builtin_corpus, split

        return split(np.asarray(self.tokenizer.encode(builtin_corpus())), 0.1)[1]

    def validation_loss(self, max_batches: Optional[int] = None) -> float:
        """Mean cross-entropy (nats per token) over the non-overlapping windows of the validation split,
        as the trainer evaluates (``max_batches`` of 48 windows: a quick estimate; None: all)."""
        return evaluate(self.model, self.validation_ids(), self.model.cfg.max_seq_len, max_batches=max_batches)

    def generate(self, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k=None,
                 top_p=None, seed: int = 0) -> str:
        """The prompt continued by sampling (``temperature`` 0 is greedy); returns prompt + continuation."""
        from ..generate import generate

        ids = generate(self.model, self.tokenizer.encode(prompt), max_new_tokens, temperature=temperature,
                       top_k=top_k, top_p=top_p, seed=seed)
        return self.tokenizer.decode(ids[0])


def evaluate(model, ids, seq_len: int, batch_size: int = 48, max_batches: Optional[int] = None) -> float:
    """Mean cross-entropy of ``model`` over every non-overlapping window of ``ids`` (the trainer's
    evaluation: eval windows in order, each batch weighted by its number of targets)."""
    from ..data import eval_batches

    total, count = 0.0, 0
    for i, (x, y) in enumerate(eval_batches(ids, seq_len, batch_size)):
        if max_batches is not None and i >= max_batches:
            break
        loss = model.forward(x, y, train=False)[1]
        total += loss * x.size
        count += x.size
    return total / count


def load(folder=None) -> Pretrained:
    """The shipped model (or another folder written by :func:`cllm.checkpoint.save_weights`)."""
    from ..checkpoint import load_weights
    from ..config import ModelConfig
    from ..model import Model
    from ..tokenizer import tokenizer_from_dict

    w = load_weights(MAIN_JOB if folder is None else folder)
    model = Model(ModelConfig.from_dict(w.model_cfg), seed=0)
    model.load_params(w.params)
    tok = None if w.tokenizer is None else tokenizer_from_dict(w.tokenizer)
    return Pretrained(model=model, tokenizer=tok, record=w.record, train_cfg=w.train_cfg)

