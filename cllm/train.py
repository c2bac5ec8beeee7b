"""The training loop: forward with the activation store, cross-entropy, backward, clip, step.

    trainer = Trainer(model, train_ids, val_ids, TrainConfig(...), tokenizer=tok, run_dir="runs/x")
    history = trainer.train()          # progress bar, validation at intervals, checkpoints
    trainer.evaluate()                 # mean loss over every window of the validation split

Guards: a loss or gradient that is not finite stops training with :class:`TrainingDiverged`, whose
message names the step, the tensor and the learning rate, after the parameters, gradients and the
batch that produced them were written to ``run_dir/diverged/`` for inspection (atomically; if the dump
cannot be written the message says so). Parameters made non-finite by an update are caught before
every evaluation and every save (one global norm; the tensor is named), and so is a non-finite
validation loss: no checkpoint ever holds a NaN or an infinity, and the last good checkpoint is left
in place. Nothing is skipped silently.

One writer: ``train()`` holds ``checkpoint.RunLock(run_dir)`` while it runs. Ctrl-C (SIGINT) during
``train()`` ends the current step, saves a checkpoint of it when a run directory was given and the
step is not saved yet, and raises :class:`TrainingInterrupted` (a KeyboardInterrupt) saying so; a
second Ctrl-C interrupts at once.

Resuming: a checkpoint holds the parameters, the optimizer state, both random generators (batch
sampling and dropout) and the history, so ``Trainer.resume(run_dir)`` continues the same run bit for
bit: 20 steps straight equal 10 steps, save, resume, 10 steps.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ._validate import is_int
from . import checkpoint as ckpt
from ._atomic import atomic_write
from .allocator import tune_allocator
from .config import ModelConfig, TrainConfig
from .data import eval_batches, get_batch
from .model import Model
from .optim import AdamW, accumulate, clip_grad_norm, lr_at, make_optimizer, zeros_like_grads
from .parallel import DataParallel, auto_workers


class TrainingDiverged(RuntimeError):
    """The loss, a gradient, a parameter or the validation loss became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped ``Trainer.train`` after a complete step. ``step``: the steps taken; ``saved``:
    the checkpoint folder holding that step (None without a run directory or when nothing was taken)."""

    def __init__(self, step: int, saved: Optional[Path]):
        self.step, self.saved = step, saved
        super().__init__(f"interrupted at step {step}; " + (f"saved {saved}" if saved is not None else "not saved"))


@dataclass
class History:
    """What a run measured. ``step`` and the per-step lists align; validation has its own steps."""

    step: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    tokens_per_s: list = field(default_factory=list)
    val_step: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_bpb: list = field(default_factory=list)  # bits per byte at val_step; None where unknown
    ratio_step: list = field(default_factory=list)
    update_ratio: list = field(default_factory=list)  # |delta params| / |params| at logging steps

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**{k: list(v) for k, v in d.items()})

    _NULLABLE = ("val_bpb",)

    @classmethod
    def validated(cls, d, where) -> "History":
        """``from_dict`` for a dict read from a file: an object of known fields, each a list of
        numbers (``val_bpb`` may hold null where the bytes were unknown); CheckpointError starting with
        ``where`` otherwise."""
        known = set(cls.__dataclass_fields__)
        if not isinstance(d, dict):
            raise ckpt.CheckpointError(f"{where}: history must be an object of lists, got {type(d).__name__}")
        for k, v in d.items():
            if k not in known:
                raise ckpt.CheckpointError(f"{where}: history has an unknown field {k!r}")
            nullable = k in cls._NULLABLE
            if not isinstance(v, list) or not all(
                    (isinstance(x, (int, float)) and not isinstance(x, bool)) or (nullable and x is None) for x in v):
                raise ckpt.CheckpointError(f"{where}: history field {k!r} must be a list of numbers")
        return cls.from_dict(d)


def _global_norm(arrays) -> float:
    return math.sqrt(sum(float(np.dot(a.reshape(-1), a.reshape(-1))) for a in arrays))


def _first_non_finite(arrays: dict) -> Optional[str]:
    """The name of the first tensor holding a NaN or an infinity, None if all are finite. One global
    norm first (cheap); the per-tensor scan only when that is not finite (it may overflow on large
    finite values, so only a tensor found non-finite counts)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(_global_norm(arrays.values())):
            return None
    return next((k for k, a in arrays.items() if not np.all(np.isfinite(a))), None)


def _write_dump(path: Path, arrays: dict) -> None:
    """``np.savez`` written atomically: never a half-written dump."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


class Trainer:
    """Trains ``model`` on ``train_data`` (1-D token ids), evaluating on ``val_data``.

    ``callbacks`` are called as ``cb(trainer, event, info)`` with event "step" (after every step;
    info has step, loss, lr, grad_norm, tokens_per_s), "eval" (step, val_loss) and "end". A callback
    may set ``trainer.stop_requested = True``; the loop then ends cleanly after the current step,
    keeping everything learned so far.
    """

    def __init__(self, model: Model, train_data, val_data, cfg: TrainConfig = TrainConfig(), tokenizer=None,
                 run_dir=None, callbacks: Optional[list] = None, progress=True, val_bytes_per_token=None,
                 kernels: Optional[str] = None):
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        if kernels is not None:
            from .kernels import check
            check(kernels)
        if cfg.seq_len > model.cfg.max_seq_len:
            raise ValueError(f"seq_len={cfg.seq_len} exceeds the model's max_seq_len={model.cfg.max_seq_len}")
        self.model = model
        self.cfg = cfg
        self.train_data = np.asarray(train_data)
        self.val_data = None if val_data is None else np.asarray(val_data)
        if val_bytes_per_token is not None and not (isinstance(val_bytes_per_token, (int, float, np.number))
                                                    and 0 < val_bytes_per_token < float("inf")):
            raise ValueError(f"val_bytes_per_token must be a positive number, got {val_bytes_per_token!r}")
        # UTF-8 bytes per token of the validation text: turns nats per token into bits per byte
        self.val_bytes_per_token = None if val_bytes_per_token is None else float(val_bytes_per_token)
        if len(self.train_data) < cfg.seq_len + 1:
            raise ValueError(f"training data has {len(self.train_data)} tokens; seq_len={cfg.seq_len} needs at least "
                             f"{cfg.seq_len + 1}")
        if run_dir is not None and getattr(model, "features_given", False):
            raise ValueError("this model was built with a given feature matrix (Model(..., features=F)), which a "
                             "checkpoint cannot restore: train it without a run_dir")
        self.tokenizer = tokenizer
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.callbacks = list(callbacks or [])
        self.progress = progress
        # kernels: "numpy", "numba" or "auto" (cllm/kernels); None keeps the model's. Not part of the
        # checkpoint: how a step is computed, not what, so a run may be resumed on either path
        if kernels is not None:
            model.use_kernels(kernels)
        self.optimizer = make_optimizer(model.params, cfg, threads=None,  # 2 threads for big models
                                        kernels=model.kernels)
        from .kernels import optim_kernels
        fused = optim_kernels(model.kernels)
        self._clip = clip_grad_norm if fused is None else fused.clip_grad_norm
        # forward and backward on several threads, each on a share of the batch (cllm/parallel.py)
        workers = auto_workers(cfg.batch_size, cfg.seq_len) if cfg.workers is None else cfg.workers
        self.parallel = DataParallel(model, workers)
        tune_allocator()  # reuse freed pages across steps (see cllm/allocator.py)
        self.batch_rng = np.random.default_rng([cfg.seed, 2])
        self.step = 0  # optimisation steps taken
        self.history = History()
        self.stop_requested = False
        self.saved_step = None  # the step of the newest checkpoint this trainer wrote or resumed from
        self._interrupted = False
        self._grads = None  # gradient buffers, allocated once and reused every step
        self._accum = None

    # ------------------------------------------------------------------ one step
    def lr_now(self) -> float:
        c = self.cfg
        return lr_at(self.step, c.lr, c.min_lr, c.warmup_steps, c.lr_decay_steps)

    def _diverged(self, what: str, lr: float, x=None, y=None, grads=None):
        where = ""
        if self.run_dir is not None:
            dump = self.run_dir / "diverged"
            arrays = {} if x is None else {"x": x, "y": y}
            arrays.update({f"param/{k}": v for k, v in self.model.params.items()})
            if grads is not None:
                arrays.update({f"grad/{k}": v for k, v in grads.items()})
            saved = "parameters, gradients and batch" if x is not None else "parameters"
            try:
                dump.mkdir(parents=True, exist_ok=True)
                _write_dump(dump / f"step_{self.step:06d}.npz", arrays)
                where = f"; {saved} saved to {dump}"
            except OSError as exc:
                where = f"; the dump of the {saved} could not be written to {dump} ({exc.strerror or exc})"
            try:
                where += f"; last good checkpoint: {ckpt.resolve_checkpoint_dir(self.run_dir)}"
            except ckpt.CheckpointError:
                pass  # none yet
        raise TrainingDiverged(f"step {self.step}: {what} (lr {lr:.3g}){where}")

    @np.errstate(over="ignore", invalid="ignore", divide="ignore")  # the guards below report non-finite values
    def train_step(self) -> dict:
        """One optimisation step over ``grad_accum`` micro-batches. Returns the step's measurements."""
        c, model = self.cfg, self.model
        t0 = time.perf_counter()
        lr = self.lr_now()
        losses = []
        if self._grads is None:
            self._grads = model.zeros_like_params()
        if c.grad_accum == 1:
            x, y = get_batch(self.train_data, c.batch_size, c.seq_len, self.batch_rng)
            loss, parts = self.parallel.forward(x, y, train=True)
            if not math.isfinite(loss):
                self._diverged(f"loss is {loss}", lr, x, y)
            grads = self.parallel.backward(parts, self._grads)
            del parts  # the stores are not needed past the backward pass: free them before the update
            losses.append(loss)
        else:
            if self._accum is None:
                self._accum = zeros_like_grads(model.params)
            grads = self._accum
            for g in grads.values():
                g.fill(0.0)
            for _ in range(c.grad_accum):
                x, y = get_batch(self.train_data, c.batch_size, c.seq_len, self.batch_rng)
                loss, parts = self.parallel.forward(x, y, train=True)
                if not math.isfinite(loss):
                    self._diverged(f"loss is {loss}", lr, x, y)
                accumulate(grads, self.parallel.backward(parts, self._grads), 1.0 / c.grad_accum)  # mean
                del parts
                losses.append(loss)
        norm = self._clip(grads, c.grad_clip)
        if not math.isfinite(norm):
            bad = next(k for k, g in grads.items() if not np.all(np.isfinite(g)))
            self._diverged(f"gradient of {bad} is not finite (global norm {norm})", lr, x, y, grads)
        log_ratio = self.step % c.log_interval == 0
        before = {k: p.copy() for k, p in model.params.items()} if log_ratio else None
        self.optimizer.step(grads, lr=lr)
        info = dict(step=self.step, loss=float(np.mean(losses)), lr=lr, grad_norm=norm)
        if before is not None:
            delta = _global_norm(model.params[k] - before[k] for k in before)
            info["update_ratio"] = delta / max(_global_norm(before.values()), 1e-30)
        self.step += 1
        info["tokens_per_s"] = c.batch_size * c.seq_len * c.grad_accum / (time.perf_counter() - t0)
        return info

    # ------------------------------------------------------------------ evaluation
    @np.errstate(over="ignore", invalid="ignore", divide="ignore")  # a non-finite loss is returned, not warned
    def evaluate(self, data=None, max_batches=None, batch_size=None) -> float:
        """Mean cross-entropy over every non-overlapping window of ``data`` (default: the validation
        split), dropout off. ``max_batches`` limits the windows (default: the config's, None = all)."""
        data = self.val_data if data is None else np.asarray(data)
        if data is None:
            raise ValueError("no validation data was given")
        max_batches = self.cfg.eval_max_batches if max_batches is None else max_batches
        total, count = 0.0, 0
        for i, (x, y) in enumerate(eval_batches(data, self.cfg.seq_len, batch_size or 4 * self.cfg.batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            loss = self.parallel.forward(x, y, train=False)[0]
            total += loss * x.size  # loss is a mean over the batch's x.size targets
            count += x.size
        return total / count

    # ------------------------------------------------------------------ the loop
    def _emit(self, event, info):
        for cb in self.callbacks:
            cb(self, event, info)

    def _record(self, info):
        h = self.history
        h.step.append(info["step"])
        h.train_loss.append(info["loss"])
        h.lr.append(info["lr"])
        h.grad_norm.append(info["grad_norm"])
        h.tokens_per_s.append(info["tokens_per_s"])
        if "update_ratio" in info:
            h.ratio_step.append(info["step"])
            h.update_ratio.append(info["update_ratio"])

    def check_finite(self) -> None:
        """TrainingDiverged if a parameter is not finite (an update overflowed): run before every
        evaluation and every save, so that no checkpoint holds a NaN or an infinity."""
        bad = _first_non_finite(self.model.params)
        if bad is not None:
            lr = self.history.lr[-1] if self.history.lr else self.lr_now()
            self._diverged(f"parameter {bad} is not finite after the update", lr)

    def run_eval(self) -> float:
        self.check_finite()
        with np.errstate(all="ignore"):
            val = self.evaluate()
        if not math.isfinite(val):
            lr = self.history.lr[-1] if self.history.lr else self.lr_now()
            self._diverged(f"validation loss is {val}", lr)
        h = self.history
        h.val_bpb.extend([None] * (len(h.val_loss) - len(h.val_bpb)))  # a run saved before val_bpb existed
        # bits per byte = (nats per token) / (bytes per token) / ln 2: comparable across tokenizers
        bpb = None if self.val_bytes_per_token is None else val / self.val_bytes_per_token / math.log(2)
        h.val_step.append(self.step)
        h.val_loss.append(val)
        h.val_bpb.append(bpb)
        self._emit("eval", dict(step=self.step, val_loss=val, val_bpb=bpb))
        return val

    def train(self, steps: Optional[int] = None) -> History:
        """Train until ``cfg.steps`` steps in all (or ``steps`` more). Evaluates every
        ``eval_interval`` steps and at the end, checkpoints every ``checkpoint_interval`` steps and at
        the end when a run directory was given."""
        c = self.cfg
        end = c.steps if steps is None else self.step + steps
        bar = None
        if self.progress:
            if self.progress == "notebook":
                from tqdm.auto import tqdm
            else:
                from tqdm import tqdm
            bar = tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                       leave=True, mininterval=0.5)
        self.stop_requested = False
        self._interrupted = False
        lock = ckpt.RunLock(self.run_dir) if self.run_dir is not None else nullcontext()
        with lock, self._sigint_deferred():
            self._loop(end, bar)
        if self._interrupted:
            saved = None
            if self.run_dir is not None and self.step > 0 and self.saved_step == self.step:
                saved = self.run_dir / ckpt.CHECKPOINTS / ckpt.checkpoint_name(self.step)
            raise TrainingInterrupted(self.step, saved)
        self._emit("end", dict(step=self.step))
        return self.history

    def _sigint_deferred(self):
        """While training runs, the first Ctrl-C only asks the loop to stop after the current step
        (which is then saved); the handler steps aside, so a second Ctrl-C interrupts at once."""
        trainer = self

        class _Deferred:
            def __enter__(self):
                self.installed = threading.current_thread() is threading.main_thread()
                if self.installed:
                    self.previous = signal.getsignal(signal.SIGINT)
                    if self.previous is None:  # installed outside Python: restore Python's default
                        self.previous = signal.default_int_handler
                    signal.signal(signal.SIGINT, self.handler)

            def handler(self, signum, frame):
                trainer._interrupted = True
                signal.signal(signal.SIGINT, self.previous)

            def __exit__(self, *exc):
                if self.installed:
                    signal.signal(signal.SIGINT, self.previous)

        return _Deferred()

    def _loop(self, end: int, bar) -> None:
        c = self.cfg
        try:
            while self.step < end and not self.stop_requested and not self._interrupted:
                info = self.train_step()
                self._record(info)
                self._emit("step", info)
                if bar is not None:
                    bar.update(1)
                    if self.step % c.log_interval == 0 or self.step == end:
                        post = dict(loss=f"{info['loss']:.4f}", lr=f"{info['lr']:.2e}")
                        if self.history.val_loss:
                            post["val"] = f"{self.history.val_loss[-1]:.4f}"
                        bar.set_postfix(post, refresh=False)
                if self.val_data is not None and self.step % c.eval_interval == 0 and self.step < end:
                    self.run_eval()
                if self.run_dir is not None and self.step % c.checkpoint_interval == 0:
                    self.save()
            if self._interrupted:  # keep the complete step just taken, skip the final evaluation
                if self.run_dir is not None and self.step > 0 and self.saved_step != self.step:
                    self.save()
                return
            if self.val_data is not None and (not self.history.val_step or self.history.val_step[-1] != self.step):
                self.run_eval()
            if self.run_dir is not None:
                self.save()
        finally:
            if bar is not None:
                bar.close()

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """The trainer's own state (everything but parameters and optimizer tensors), JSON-ready."""
        return dict(step=self.step, batch_rng=self.batch_rng.bit_generator.state,
                    dropout_rng=self.model.dropout_rng.bit_generator.state, history=self.history.to_dict())

    def save(self) -> Path:
        """Write a checkpoint of the current step into ``run_dir`` (atomically)."""
        if self.run_dir is None:
            raise ValueError("this trainer has no run_dir to save into")
        self.check_finite()  # never a checkpoint with a NaN or an infinity in it
        tok = None if self.tokenizer is None else self.tokenizer.to_dict()
        with ckpt.RunLock(self.run_dir):
            path = ckpt.save_checkpoint(self.run_dir, self.step, self.model.params, self.optimizer.state_dict(),
                                        self.model.cfg.to_dict(), self.cfg.to_dict(), tok, self.state())
        self.saved_step = self.step
        return path

    @classmethod
    def resume(cls, run_dir, train_data, val_data, cfg: Optional[TrainConfig] = None, **kwargs) -> "Trainer":
        """Rebuild a trainer from the latest checkpoint in ``run_dir`` and continue that run.

        ``cfg`` may change settings that do not alter the model (for example ``steps``); by default
        the checkpoint's training configuration is used.
        """
        ck = ckpt.load_checkpoint(run_dir)
        model = Model(ModelConfig.from_dict(ck.model_cfg), seed=0)
        model.load_params(ck.params)
        cfg = cfg or TrainConfig.from_dict(ck.train_cfg)
        tokenizer = kwargs.pop("tokenizer", None)
        if tokenizer is None and ck.tokenizer is not None:
            from .tokenizer import tokenizer_from_dict
            tokenizer = tokenizer_from_dict(ck.tokenizer)
        run_dir = kwargs.pop("out_dir", run_dir)
        trainer = cls(model, train_data, val_data, cfg, tokenizer=tokenizer, run_dir=run_dir, **kwargs)
        trainer.optimizer.load_state_dict(ck.opt_state)
        st, where = ck.trainer_state, ck.path / "trainer.json"
        missing = [k for k in ("step", "batch_rng", "dropout_rng", "history") if k not in st]
        if missing:
            raise ckpt.CheckpointError(f"{where}: the trainer state lacks {', '.join(missing)}")
        if not is_int(st["step"]) or st["step"] != ck.step:
            raise ckpt.CheckpointError(f"{where}: the trainer state's step {st['step']!r} disagrees with the "
                                       f"checkpoint's step {ck.step}")
        trainer.step = ck.step
        try:
            trainer.batch_rng = ckpt.generator_from_state(st["batch_rng"])
            model.dropout_rng = ckpt.generator_from_state(st["dropout_rng"])
        except ckpt.CheckpointError as exc:
            raise ckpt.CheckpointError(f"{where}: {exc}") from None
        trainer.history = History.validated(st["history"], where)
        same_run = os.path.realpath(trainer.run_dir) == os.path.realpath(Path(ck.path).parent.parent)
        trainer.saved_step = ck.step if same_run else None
        return trainer


# ---------------------------------------------------------------------------------------------- one timed step
class TrainingStep:
    """One float32 training step taken as :class:`cllm.train.Trainer` takes it, its phases timed.

    One piece of code for ``bench``, ``bench --compare torch`` and the memory measurement: forward and
    backward through :class:`cllm.parallel.DataParallel` (``workers`` threads; None: the trainer's
    automatic choice for this batch), gradients written into buffers allocated once, then AdamW with
    the trainer's defaults (``optimizer_threads`` None: automatic), on the model's kernel path. Calling it with a batch returns
    ``(loss, (forward, backward, optimizer))``, the phases in seconds of ``clock``.
    """

    def __init__(self, model: Model, batch_size: int, seq_len: int, workers=None, optimizer_threads=None,
                 clock=time.perf_counter):
        tc = TrainConfig()
        self.model = model
        self.optimizer = AdamW(model.params, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps,
                               weight_decay=tc.weight_decay, threads=optimizer_threads, kernels=model.kernels)
        self.parallel = DataParallel(model, auto_workers(batch_size, seq_len) if workers is None else workers)
        self.grads = model.zeros_like_params()  # reused every step, as in the trainer
        self.clock = clock

    def __call__(self, x, y):
        clock = self.clock
        t0 = clock()
        loss, parts = self.parallel.forward(x, y)
        t1 = clock()
        self.parallel.backward(parts, self.grads)
        del parts  # the stores die before the update, as in the trainer
        t2 = clock()
        self.optimizer.step(self.grads)
        t3 = clock()
        return loss, (t1 - t0, t2 - t1, t3 - t2)
