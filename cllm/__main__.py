"""The command line: ``python -m cllm train | generate | gradcheck | bench | experiment | export | import``.

Every user mistake (a missing file, a bad flag value, a prompt outside the vocabulary, an unreadable
checkpoint) prints one line to stderr and exits with status 2, before anything is written.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path


class UserError(Exception):
    """A mistake in what the user asked for: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UserError(f"{self.prog}: {message}")


def _int_at_least(minimum, what):
    """An argparse type: an integer >= ``minimum``, described as ``what`` in the error."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "a non-negative integer")


def _float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------- train
def _add_train_args(p):
    from .config import (ACTIVATIONS, ATTENTION_BIASES, DTYPES, EMBEDDINGS, INITS, OPTIMIZERS, ModelConfig,
                         TrainConfig)
    from .tokenizer import TOKENIZER_KINDS

    m, t = ModelConfig(), TrainConfig()
    g = p.add_argument_group("model")
    g.add_argument("--d-model", type=_positive_int, default=m.d_model)
    g.add_argument("--n-layers", type=_positive_int, default=m.n_layers)
    g.add_argument("--n-heads", type=_positive_int, default=m.n_heads)
    g.add_argument("--d-ff", type=_positive_int, default=m.d_ff)
    g.add_argument("--activation", choices=ACTIVATIONS, default=m.activation)
    g.add_argument("--init", choices=INITS, default=m.init)
    g.add_argument("--dropout", type=_float, default=m.dropout)
    g.add_argument("--untied", action="store_true", help="a separate output head instead of the token embedding")
    g.add_argument("--embedding", choices=EMBEDDINGS, default=m.embedding)
    g.add_argument("--attention-bias", choices=ATTENTION_BIASES, default=m.attention_bias)
    g.add_argument("--dtype", choices=DTYPES, default=m.dtype)
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=_positive_int, default=t.steps)
    g.add_argument("--seq-len", type=_positive_int, default=t.seq_len, help="context length (block size)")
    g.add_argument("--batch-size", type=_positive_int, default=t.batch_size)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=t.optimizer)
    g.add_argument("--lr", type=_float, default=t.lr)
    g.add_argument("--min-lr", type=_float, default=t.min_lr)
    g.add_argument("--warmup-steps", type=_nonneg_int, default=t.warmup_steps)
    g.add_argument("--lr-decay-steps", type=_positive_int, default=None, help="default: --steps")
    g.add_argument("--beta1", type=_float, default=t.beta1)
    g.add_argument("--beta2", type=_float, default=t.beta2)
    g.add_argument("--weight-decay", type=_float, default=t.weight_decay)
    g.add_argument("--momentum", type=_float, default=t.momentum)
    g.add_argument("--grad-clip", type=_float, default=t.grad_clip, help="0 switches clipping off")
    g.add_argument("--grad-accum", type=_positive_int, default=t.grad_accum)
    g.add_argument("--workers", type=_positive_int, default=None,
                   help="threads that each run forward and backward on a share of the batch "
                        "(default: one per 256 tokens of the batch, at most one per core)")
    g.add_argument("--kernels", choices=["auto", "numpy", "numba"], default="auto",
                   help="the numpy reference ops or the fused numba kernels (auto: numba when it imports); "
                        "how a step is computed, not what: a run may resume on either")
    g.add_argument("--eval-interval", type=_positive_int, default=t.eval_interval)
    g.add_argument("--eval-batches", type=_positive_int, default=None, help="default: the full validation split")
    g.add_argument("--checkpoint-interval", type=_positive_int, default=t.checkpoint_interval)
    g.add_argument("--seed", type=_nonneg_int, default=t.seed)
    g = p.add_argument_group("data and output")
    g.add_argument("--data", default=None, help="a UTF-8 text file or a folder of .txt files (default: built-in corpus)")
    g.add_argument("--tokenizer", choices=TOKENIZER_KINDS, default="char")
    g.add_argument("--vocab-size", type=_positive_int, default=None,
                   help=f"--tokenizer bpe: tokens in the vocabulary, learned on the training split "
                        f"(default {_BPE_VOCAB})")
    g.add_argument("--out", default=None, help="run directory (default: runs/<tokenizer>-<date>-<time>)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    g.add_argument("--sample-tokens", type=_nonneg_int, default=300, help="length of the sample printed at the end")
    g.add_argument("--no-progress", action="store_true")
    # Which flags were given: every default becomes SUPPRESS (absent from the namespace unless given)
    # and cmd_train fills the defaults in, so that --resume can tell a conflicting flag from a default.
    defaults = {}
    for action in p._actions:
        if action.default is not argparse.SUPPRESS:
            defaults[action.dest] = action.default
            action.default = argparse.SUPPRESS
    p.set_defaults(_train_defaults=defaults)


def _given_train_flags(args) -> set:
    """The train flags given on the command line; the others are set to their defaults."""
    defaults = getattr(args, "_train_defaults", {})
    given = {dest for dest in defaults if hasattr(args, dest)}
    for dest, value in defaults.items():
        if not hasattr(args, dest):
            setattr(args, dest, value)
    return given


# On --resume: flags that may change (how the run proceeds, not what it computes) ...
_RESUME_CHANGEABLE = ("steps", "workers", "kernels", "eval_interval", "eval_batches", "checkpoint_interval")
# ... and flags that must agree with the checkpoint: flag dest -> (config, field)
_RESUME_FIXED = {**{d: ("model", d) for d in ("d_model", "n_layers", "n_heads", "d_ff", "activation", "init",
                                                 "dropout", "embedding", "attention_bias", "dtype")},
                 **{d: ("train", d) for d in ("seq_len", "batch_size", "optimizer", "lr", "min_lr", "warmup_steps",
                                                 "lr_decay_steps", "beta1", "beta2", "weight_decay", "momentum",
                                                 "grad_clip", "grad_accum", "seed")}}


def _flag(dest) -> str:
    return "--" + dest.replace("_", "-")


def _check_resume_flags(args, given, ck) -> None:
    """A model, tokenizer or training flag given with --resume must equal the checkpoint's value."""
    for dest in sorted(given):
        if dest in _RESUME_FIXED:
            where, name = _RESUME_FIXED[dest]
            value, stored = getattr(args, dest), (ck.model_cfg if where == "model" else ck.train_cfg).get(name)
        elif dest == "untied":
            value, stored = args.untied, not ck.model_cfg.get("tie_weights", True)
        elif dest == "tokenizer":
            value, stored = args.tokenizer, ck.tokenizer.get("type")
        else:
            continue
        if value != stored:
            shown = "" if isinstance(value, bool) else f" {value}"
            raise UserError(f"{_flag(dest)}{shown} conflicts with the checkpoint's {dest} {stored!r} "
                            f"({args.resume}); a resumed run keeps its model, tokenizer and training settings "
                            f"(it may change {', '.join(map(_flag, _RESUME_CHANGEABLE))})")


def _resume_run_dir(resume: Path):
    """--resume names a run directory or one of its checkpoint folders -> (run directory or None for a
    checkpoint folder outside a run, whether it is the run's newest checkpoint)."""
    from .checkpoint import CHECKPOINTS, resolve_checkpoint_dir

    if not (resume / "manifest.json").is_file():
        return resume, True
    if resume.parent.name != CHECKPOINTS:
        return None, False
    run = resume.parent.parent
    try:
        newest = os.path.realpath(resolve_checkpoint_dir(run)) == os.path.realpath(resume)
    except ValueError:
        newest = False
    return run, newest


def _check_out(out: Path) -> None:
    """--out must be a folder (or not exist yet), and never a checkpoint folder or inside one."""
    for q in (Path(os.path.abspath(out)), *Path(os.path.abspath(out)).parents):
        if (q / "manifest.json").is_file():
            raise UserError(f"--out {out}: inside the checkpoint folder {q}; choose another")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")


_BPE_VOCAB = 512  # default --vocab-size of a byte-level BPE


def _fit_tokenizer(args, text):
    """The tokenizer ``--tokenizer`` names, built from ``text`` (BPE: learned on the training split only)."""
    from .data import split
    from .tokenizer import BPETokenizer, CharTokenizer, WordTokenizer

    if args.tokenizer != "bpe":
        if args.vocab_size is not None:
            raise UserError("--vocab-size applies to --tokenizer bpe only")
        return CharTokenizer.fit(text) if args.tokenizer == "char" else WordTokenizer.fit(text)
    try:
        return BPETokenizer.train(split(text, 0.1)[0] or text, args.vocab_size or _BPE_VOCAB,
                                  progress=False if args.no_progress else None)
    except ValueError as exc:
        raise UserError(f"--vocab-size: {exc}") from None


def _load_corpus(args):
    from .data import CORPUS_NAME, builtin_corpus, load_text

    if args.data is None:
        return builtin_corpus(), CORPUS_NAME
    return load_text(args.data), args.data


def _check_training_memory(model_cfg, train_cfg, n_val_tokens):
    from .activations import check_memory, param_count, training_bytes
    from .parallel import auto_workers

    c = train_cfg
    workers = c.workers or auto_workers(c.batch_size, c.seq_len)
    need = training_bytes(model_cfg, c.batch_size, c.seq_len, optimizer=c.optimizer, workers=workers,
                          grad_accum=c.grad_accum, eval_batch_size=min(4 * c.batch_size, (n_val_tokens - 1) // c.seq_len))
    check_memory(need, f"training {param_count(model_cfg):,} parameters on batches of {c.batch_size} x {c.seq_len} tokens")


def cmd_train(args):
    with contextlib.ExitStack() as held:  # the run directory's lock, for the whole run
        return _train(args, held)


@dataclass
class _RunPlan:
    """What a training invocation will do, settled before anything is written: where (``out``, locked),
    with which tokenizer and token ids, which configurations, and the checkpoint it resumes (or None)."""

    out: Path
    tok: object
    ids: object
    model_cfg: object
    train_cfg: object
    resumed: object = None  # the Checkpoint being continued


def _plan_resume(args, given, text, held) -> _RunPlan:
    """``--resume``: the run directory to continue in, the checkpoint, and the settings that may change."""
    from .checkpoint import RunLock, load_checkpoint, run_dir_is_empty
    from .config import ModelConfig, TrainConfig
    from .tokenizer import tokenizer_from_dict

    run_dir, newest = _resume_run_dir(Path(args.resume))
    if args.out:
        out = Path(args.out)
    elif run_dir is None:
        raise UserError(f"{args.resume}: a checkpoint folder outside a run directory; pass --out for the resumed run")
    elif not newest:
        raise UserError(f"{args.resume}: not the newest checkpoint of {run_dir}; pass --out to continue it "
                        "as a new run (or --resume the run directory)")
    else:
        out = run_dir
    same_run = run_dir is not None and os.path.realpath(out) == os.path.realpath(run_dir)
    _check_out(out)
    held.enter_context(RunLock(out))  # before anything is read or written: one writer per run
    if not same_run and not run_dir_is_empty(out):
        raise UserError(f"{out}: already exists and is not empty, and is not the run being resumed; "
                        "choose an empty or new --out")
    ck = load_checkpoint(args.resume)
    if ck.train_cfg is None or ck.tokenizer is None:
        raise UserError(f"{args.resume}: the checkpoint has no {'training configuration' if ck.tokenizer else 'tokenizer'}; "
                        "it cannot be resumed")
    _check_resume_flags(args, given, ck)
    tok = tokenizer_from_dict(ck.tokenizer)
    # how the run proceeds, not what it computes: these may change; the rest stays the checkpoint's
    overrides = {"steps": max(args.steps if "steps" in given else ck.train_cfg["steps"], ck.step)}
    for dest, name in (("workers", "workers"), ("eval_interval", "eval_interval"),
                       ("eval_batches", "eval_max_batches"), ("checkpoint_interval", "checkpoint_interval")):
        if dest in given:
            overrides[name] = getattr(args, dest)
    return _RunPlan(out, tok, tok.encode(text), ModelConfig.from_dict(ck.model_cfg),
                    TrainConfig.from_dict({**ck.train_cfg, **overrides}), resumed=ck)


def _plan_new_run(args, text, held) -> _RunPlan:
    """A new run: the tokenizer fitted to the text, the configurations from the flags, an empty --out."""
    from .checkpoint import RunLock, run_dir_is_empty
    from .config import ModelConfig, TrainConfig
    from .data import split

    tok = _fit_tokenizer(args, text)
    ids = tok.encode(text)
    codes = None
    if args.embedding == "lattice" or args.attention_bias == "lattice":
        from .lattice.model import tokenizer_codes
        codes = tokenizer_codes(tok, split(ids, 0.1)[0])  # primes by training-split frequency
    model_cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=args.d_model, n_layers=args.n_layers,
                            n_heads=args.n_heads, d_ff=args.d_ff, max_seq_len=args.seq_len, dtype=args.dtype,
                            activation=args.activation, tie_weights=not args.untied, dropout=args.dropout,
                            init=args.init, embedding=args.embedding, attention_bias=args.attention_bias,
                            lattice_codes=codes)
    train_cfg = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len, steps=args.steps,
                            optimizer=args.optimizer, lr=args.lr, min_lr=args.min_lr,
                            warmup_steps=args.warmup_steps, lr_decay_steps=args.lr_decay_steps or args.steps,
                            beta1=args.beta1, beta2=args.beta2, weight_decay=args.weight_decay,
                            momentum=args.momentum, grad_clip=args.grad_clip, grad_accum=args.grad_accum,
                            eval_interval=args.eval_interval, eval_max_batches=args.eval_batches,
                            checkpoint_interval=args.checkpoint_interval, seed=args.seed, workers=args.workers)
    out = Path(args.out) if args.out else Path("runs") / f"{args.tokenizer}-{time.strftime('%Y%m%d-%H%M%S')}"
    _check_out(out)
    held.enter_context(RunLock(out))  # before the emptiness check: two runs cannot both pass it
    if not run_dir_is_empty(out):
        raise UserError(f"{out}: already exists and is not empty; pass --resume {out} or choose another --out")
    return _RunPlan(out, tok, ids, model_cfg, train_cfg)


def _train(args, held):
    """Plan (new run or resume), check everything, then train, report and sample."""
    from .checkpoint import check_run_dir_writable
    from .data import split
    from .model import Model
    from .train import Trainer

    # ---- everything is checked before anything is written
    given = _given_train_flags(args)
    text, source = _load_corpus(args)
    plan = _plan_resume(args, given, text, held) if args.resume else _plan_new_run(args, text, held)
    out, tok, ids, model_cfg, train_cfg = plan.out, plan.tok, plan.ids, plan.model_cfg, plan.train_cfg
    train_ids, val_ids = split(ids, 0.1)
    need = train_cfg.seq_len + 1
    if len(train_ids) < need or len(val_ids) < need:
        raise UserError(f"{source}: {len(ids)} tokens are too few for seq_len={train_cfg.seq_len} "
                        f"(each split needs at least {need})")
    _check_training_memory(model_cfg, train_cfg, len(val_ids))  # before any model is built
    val_bpt = tok.num_bytes(val_ids) / len(val_ids)  # UTF-8 bytes per token of the validation split
    check_run_dir_writable(out)  # before step 1, not at the first save

    if plan.resumed is not None:
        trainer = Trainer.resume(plan.resumed.path, train_ids, val_ids, train_cfg, out_dir=out,
                                 progress=not args.no_progress, val_bytes_per_token=val_bpt,
                                 kernels=args.kernels)
        print(f"resuming {args.resume} at step {trainer.step} of {train_cfg.steps}")
    else:
        trainer = Trainer(Model(model_cfg, seed=args.seed), train_ids, val_ids, train_cfg, tokenizer=tok,
                          run_dir=out, progress=not args.no_progress, val_bytes_per_token=val_bpt,
                          kernels=args.kernels)
    print(f"data: {source}: {len(text):,} characters, {len(ids):,} tokens, vocabulary {tok.vocab_size}; "
          f"train {len(train_ids):,} / validation {len(val_ids):,} tokens")
    print(f"model: {trainer.model.num_params():,} parameters ({model_cfg.n_layers} layers, {model_cfg.n_heads} "
          f"heads, d_model {model_cfg.d_model}, d_ff {model_cfg.d_ff}, context {model_cfg.max_seq_len}, "
          f"{model_cfg.dtype})")
    kernels = trainer.model.kernels
    print(f"kernels: {kernels}" + (" (fused, cllm/kernels)" if kernels == "numba" else " (the reference ops)"))
    print(f"run directory: {out}")
    return _run_and_report(args, trainer, plan, val_ids, val_bpt)


def _run_and_report(args, trainer, plan, val_ids, val_bpt) -> int:
    """Train; then the loss plot, the final line (validation loss, bits per byte), the time, a sample."""
    import numpy as np

    from .plots import plot_history
    from .train import TrainingDiverged, TrainingInterrupted

    out, tok, train_cfg = plan.out, plan.tok, plan.train_cfg
    n_val = (len(val_ids) - 1) // train_cfg.seq_len
    if train_cfg.eval_max_batches is None or train_cfg.eval_max_batches * 4 * train_cfg.batch_size >= n_val:
        windows = f"all {n_val} windows"
    else:  # Trainer.evaluate: eval_max_batches batches of 4 * batch_size windows, from the start
        windows = f"the first {train_cfg.eval_max_batches * 4 * train_cfg.batch_size} of {n_val} windows"

    def report(trainer, event, info):
        if event == "eval":
            print(f"step {info['step']:>6}: validation loss {info['val_loss']:.4f} "
                  f"({info['val_bpb']:.4f} bits per byte)", file=sys.stderr if
                  not args.no_progress else sys.stdout, flush=True)

    trainer.callbacks.append(report)
    t0, start = time.perf_counter(), trainer.step
    try:
        history = trainer.train()
    except TrainingDiverged as exc:
        print(f"cllm: training stopped: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        if exc.saved is not None:
            print(f"cllm: interrupted at step {exc.step}; saved; resume with --resume {out}", file=sys.stderr)
        else:
            print(f"cllm: interrupted at step {exc.step}; nothing saved (no step completed since the last "
                  "checkpoint)", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - t0
    ran = trainer.step - start  # steps this invocation took (a resumed history holds the earlier ones too)
    val = history.val_loss[-1]
    wrote = f"{out}/loss.png and "
    try:
        plot_history(history, out / "loss.png", title=f"{out.name}: loss")
    except OSError as exc:
        print(f"cllm: warning: could not write {out}/loss.png ({exc.strerror or exc}); the checkpoint is complete",
              file=sys.stderr)
        wrote = ""
    print(f"final validation loss {val:.4f} (mean over {windows} of {train_cfg.seq_len} tokens "
          f"of the validation split) at step {trainer.step}; {history.val_bpb[-1]:.4f} bits per byte "
          f"({val_bpt:.3f} bytes per token)")
    tps = np.median(history.tokens_per_s[len(history.tokens_per_s) - ran:]) if ran else float("nan")
    print(f"time: {elapsed:.1f} s for {ran} steps ({tps:,.0f} tokens/s median)")
    print(f"wrote {wrote}the checkpoint {out}/latest")
    if args.sample_tokens:
        from .generate import generate

        prompt = plan.ids[:1]  # the corpus's first token: always in the vocabulary
        sample = generate(trainer.model, prompt, args.sample_tokens, temperature=0.8, top_k=None, seed=args.seed)
        print("sample:\n" + tok.decode(sample[0]))
    return 0


# ---------------------------------------------------------------------------------------------- generate
def cmd_generate(args):
    from .activations import check_memory, generation_bytes, param_count
    from .checkpoint import is_weights_folder, load_checkpoint, load_weights
    from .config import ModelConfig
    from .generate import check_sampling, generate
    from .model import Model
    from .tokenizer import tokenizer_from_dict

    temperature = 0.0 if args.greedy else args.temperature
    try:  # before anything is loaded
        check_sampling(temperature, args.top_k, args.top_p, args.tokens,
                       names=("--temperature", "--top-k", "--top-p", "--tokens"))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.pretrained:
        from .pretrained import MAIN_JOB

        args.checkpoint = str(MAIN_JOB)
    ck = load_weights(args.checkpoint) if is_weights_folder(args.checkpoint) else load_checkpoint(args.checkpoint)
    if ck.tokenizer is None:
        raise UserError(f"{args.checkpoint}: the checkpoint has no tokenizer.json")
    tok = tokenizer_from_dict(ck.tokenizer)
    if args.prompt == "":
        raise UserError("--prompt must not be empty")
    try:
        prompt = tok.encode(args.prompt)
    except ValueError as exc:
        raise UserError(f"--prompt: {exc}") from None
    model_cfg = ModelConfig.from_dict(ck.model_cfg)
    check_memory(generation_bytes(model_cfg), f"{args.checkpoint}: generating with {param_count(model_cfg):,} parameters")
    model = Model(model_cfg, seed=0)
    model.load_params(ck.params)
    ids = generate(model, prompt, args.tokens, temperature=temperature, top_k=args.top_k, top_p=args.top_p,
                   seed=args.seed)
    print(tok.decode(ids[0]))
    return 0


# ---------------------------------------------------------------------------------------------- gradcheck
def cmd_gradcheck(args):
    import numpy as np

    import dataclasses

    from .config import PRESETS
    from .gradcheck import check_model, perturb
    from .model import Model

    tiny = PRESETS["tiny"]
    cfg = dataclasses.replace(tiny.model, activation=args.activation, tie_weights=not args.untied,
                              dropout=args.dropout, embedding=args.embedding, attention_bias=args.attention_bias)
    model = Model(cfg, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    perturb(model.params, 0.1, rng)  # move off the init so that no gradient hides behind a 0 or a 1
    idx = rng.integers(0, cfg.vocab_size, (tiny.batch_size, cfg.max_seq_len))
    targets = rng.integers(0, cfg.vocab_size, (tiny.batch_size, cfg.max_seq_len))
    report = check_model(model, idx, targets, dropout_seed=7 if args.dropout else None,
                         max_entries=args.max_entries)
    print(f"gradient check: 2 layers, 2 heads, d_model 16, seq 8, batch 3, float64, {args.activation}, "
          f"{'untied' if args.untied else 'tied'} head, dropout {args.dropout}")
    print(report.table())
    worst = report.max_rel_error
    print(f"largest relative error {worst:.2e}: {'PASS' if worst < 1e-6 else 'FAIL'} (threshold 1e-6)")
    return 0 if worst < 1e-6 else 1


# ---------------------------------------------------------------------------------------------- bench
def cmd_bench(args):
    if args.kernels == "numba":
        from .kernels import available

        if not available():
            raise UserError("--kernels numba needs numba, which is not installed or does not import: pip install numba")
    if args.compile_time:
        from .lab.bench import compile_times

        return compile_times()
    if args.sweep:
        from .lab.bench import sweep

        return sweep(repeats=min(args.repeats, 3), kernels=args.kernels)
    if args.compare == "torch":
        from .lab.compare_torch import compare_torch

        return compare_torch(repeats=args.repeats, configs=args.configs, kernels=args.kernels)
    from .lab.bench import run_bench

    return run_bench(repeats=args.repeats, configs=args.configs, kernels=args.kernels)


def cmd_experiment(args):
    if args.name == "grokking":
        from .lab.grokking import run_experiment as run_grokking

        return run_grokking(seeds=args.seeds, steps=args.steps, out=args.out)
    from .lab.lattice_experiment import run_experiment

    return run_experiment(args.name, seeds=args.seeds, steps=args.steps, out=args.out)


# ---------------------------------------------------------------------------------------------- export, import
def cmd_export(args):
    from .interop import export_run

    out = export_run(args.run_dir, args.out, force=args.force)
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


def cmd_import(args):
    from .interop import import_run

    ckpt = import_run(args.directory, args.out, dtype=args.dtype)
    print(f"wrote the run {args.out} ({ckpt.name}); continue with: python -m cllm train --resume {args.out}")
    return 0


def build_parser():
    from .config import ACTIVATIONS, ATTENTION_BIASES, DTYPES, EMBEDDINGS, PRESETS

    p = _Parser(prog="cllm", description="A small GPT-style language model in numpy.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train a model (default: character level on the built-in corpus)")
    _add_train_args(t)
    t.set_defaults(func=cmd_train)
    g = sub.add_parser("generate", help="sample text from a checkpoint")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a run directory, a checkpoint directory or a folder of weights")
    src.add_argument("--pretrained", action="store_true",
                     help="the shipped model (the main job's weights, cllm/pretrained/main_job)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--tokens", type=_nonneg_int, default=200)
    g.add_argument("--temperature", type=_float, default=0.8)
    g.add_argument("--top-k", type=_positive_int, default=None)
    g.add_argument("--top-p", type=_float, default=None)
    g.add_argument("--greedy", action="store_true")
    g.add_argument("--seed", type=_nonneg_int, default=0)
    g.set_defaults(func=cmd_generate)
    c = sub.add_parser("gradcheck", help="check every gradient of a small float64 model by finite differences")
    c.add_argument("--activation", choices=ACTIVATIONS, default="gelu")
    c.add_argument("--untied", action="store_true")
    c.add_argument("--dropout", type=_float, default=0.0)
    c.add_argument("--embedding", choices=EMBEDDINGS, default="learned")
    c.add_argument("--attention-bias", choices=ATTENTION_BIASES, default="none")
    c.add_argument("--max-entries", type=_positive_int, default=None, help="check a random subset per tensor")
    c.add_argument("--seed", type=_nonneg_int, default=0)
    c.set_defaults(func=cmd_gradcheck)
    b = sub.add_parser("bench", help="time training steps against the machine's matmul peak")
    b.add_argument("--repeats", type=_positive_int, default=20)
    b.add_argument("--configs", nargs="+", choices=sorted(PRESETS), default=["seed", "small"])
    b.add_argument("--compare", choices=["torch"], default=None, help="also time the PyTorch reference")
    b.add_argument("--kernels", choices=["both", "numpy", "numba"], default="both",
                   help="the kernel paths to time (both: numpy and, where it imports, numba, in turns)")
    b.add_argument("--sweep", action="store_true",
                   help="tokens/s and fraction of peak over d_model 128-1024 and context 64-1024 instead")
    b.add_argument("--compile-time", action="store_true",
                   help="the fused kernels' first-use compile time, cold and cached, instead")
    b.set_defaults(func=cmd_bench)
    e = sub.add_parser("experiment", help="run a measured experiment (lattice: do prime embeddings help? "
                                          "grokking: do clock embeddings help modular addition?)")
    e.add_argument("name", choices=["lattice", "grokking"])
    e.add_argument("--seeds", type=_positive_int, default=5)
    e.add_argument("--steps", type=_positive_int, default=None)
    e.add_argument("--out", default="figures")
    e.set_defaults(func=cmd_experiment)
    x = sub.add_parser("export", help="write a run as a Hugging Face GPT-2 folder (config.json, model.safetensors, "
                                      "tokenizer)")
    x.add_argument("run_dir", metavar="RUN_DIR", help="a run directory or a checkpoint directory")
    x.add_argument("--format", choices=["hf"], required=True)
    x.add_argument("--out", required=True, metavar="DIR")
    x.add_argument("--force", action="store_true", help="replace DIR if it exists and is not empty")
    x.set_defaults(func=cmd_export)
    i = sub.add_parser("import", help="turn a GPT-2 checkpoint folder (config.json, model.safetensors, tokenizer) "
                                      "into a run directory")
    i.add_argument("directory", metavar="DIR")
    i.add_argument("--out", required=True, metavar="RUN_DIR")
    i.add_argument("--dtype", choices=DTYPES, default=None, help="default: the file's")
    i.set_defaults(func=cmd_import)
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as exc:
        print(f"cllm: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:  # bad values, missing or unreadable files, bad checkpoints
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"cllm: error: {message}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # what the estimates before allocating did not foresee
        message = str(exc).splitlines()[0] if str(exc) else "no more memory could be allocated"
        print(f"cllm: error: out of memory: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cllm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
