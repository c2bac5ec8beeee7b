"""The command line: ``python -m cllm train | generate | gradcheck | bench | experiment``.

Every user mistake (a missing file, a bad flag value, a prompt outside the vocabulary, an unreadable
checkpoint) prints one line to stderr and exits with status 2, before anything is written.
"""
from __future__ import annotations

import argparse
import sys
import time
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
    from .config import ACTIVATIONS, ModelConfig, TrainConfig

    m, t = ModelConfig(), TrainConfig()
    g = p.add_argument_group("model")
    g.add_argument("--d-model", type=_positive_int, default=m.d_model)
    g.add_argument("--n-layers", type=_positive_int, default=m.n_layers)
    g.add_argument("--n-heads", type=_positive_int, default=m.n_heads)
    g.add_argument("--d-ff", type=_positive_int, default=m.d_ff)
    g.add_argument("--activation", choices=list(ACTIVATIONS), default=m.activation)
    g.add_argument("--init", choices=["gpt2", "xavier", "he"], default=m.init)
    g.add_argument("--dropout", type=_float, default=m.dropout)
    g.add_argument("--untied", action="store_true", help="a separate output head instead of the token embedding")
    g.add_argument("--embedding", choices=["learned", "lattice"], default=m.embedding)
    g.add_argument("--attention-bias", choices=["none", "lattice"], default=m.attention_bias)
    g.add_argument("--dtype", choices=["float32", "float64"], default=m.dtype)
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=_positive_int, default=t.steps)
    g.add_argument("--seq-len", type=_positive_int, default=t.seq_len, help="context length (block size)")
    g.add_argument("--batch-size", type=_positive_int, default=t.batch_size)
    g.add_argument("--optimizer", choices=["adamw", "sgd", "momentum"], default=t.optimizer)
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
    g.add_argument("--eval-interval", type=_positive_int, default=t.eval_interval)
    g.add_argument("--eval-batches", type=_positive_int, default=None, help="default: the full validation split")
    g.add_argument("--checkpoint-interval", type=_positive_int, default=t.checkpoint_interval)
    g.add_argument("--seed", type=_nonneg_int, default=t.seed)
    g = p.add_argument_group("data and output")
    g.add_argument("--data", default=None, help="a UTF-8 text file or a folder of .txt files (default: built-in corpus)")
    g.add_argument("--tokenizer", choices=["char", "word"], default="char")
    g.add_argument("--out", default=None, help="run directory (default: runs/<tokenizer>-<date>-<time>)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    g.add_argument("--sample-tokens", type=_nonneg_int, default=300, help="length of the sample printed at the end")
    g.add_argument("--no-progress", action="store_true")


def _load_corpus(args):
    from .data import CORPUS_NAME, builtin_corpus, load_text

    if args.data is None:
        return builtin_corpus(), CORPUS_NAME
    return load_text(args.data), args.data


def cmd_train(args):
    import numpy as np

    from .checkpoint import load_checkpoint
    from .config import ModelConfig, TrainConfig
    from .data import split
    from .model import Model
    from .tokenizer import CharTokenizer, WordTokenizer, tokenizer_from_dict
    from .train import Trainer, TrainingDiverged
    from .plots import plot_history

    # ---- everything is checked before anything is written
    text, source = _load_corpus(args)
    if args.resume:
        ck = load_checkpoint(args.resume)
        tok = tokenizer_from_dict(ck.tokenizer)
        ids = tok.encode(text)
        model_cfg = ModelConfig.from_dict(ck.model_cfg)
        overrides = {"steps": max(args.steps, ck.step)}
        if args.workers is not None:  # how the steps are computed, not what they compute: may change
            overrides["workers"] = args.workers
        train_cfg = TrainConfig.from_dict({**ck.train_cfg, **overrides})
        out = Path(args.out) if args.out else Path(args.resume)
    else:
        tok = CharTokenizer.fit(text) if args.tokenizer == "char" else WordTokenizer.fit(text)
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
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out}: already exists and is not empty; pass --resume {out} or choose another --out")
    train_ids, val_ids = split(ids, 0.1)
    need = train_cfg.seq_len + 1
    if len(train_ids) < need or len(val_ids) < need:
        raise UserError(f"{source}: {len(ids)} tokens are too few for seq_len={train_cfg.seq_len} "
                        f"(each split needs at least {need})")

    if args.resume:
        trainer = Trainer.resume(args.resume, train_ids, val_ids, train_cfg, out_dir=out, progress=not args.no_progress)
        model = trainer.model
        print(f"resuming {args.resume} at step {trainer.step} of {train_cfg.steps}")
    else:
        model = Model(model_cfg, seed=args.seed)
        trainer = Trainer(model, train_ids, val_ids, train_cfg, tokenizer=tok, run_dir=out,
                          progress=not args.no_progress)
    n_val = (len(val_ids) - 1) // train_cfg.seq_len
    print(f"data: {source}: {len(text):,} characters, {len(ids):,} tokens, vocabulary {tok.vocab_size}; "
          f"train {len(train_ids):,} / validation {len(val_ids):,} tokens")
    print(f"model: {model.num_params():,} parameters ({model_cfg.n_layers} layers, {model_cfg.n_heads} heads, "
          f"d_model {model_cfg.d_model}, d_ff {model_cfg.d_ff}, context {model_cfg.max_seq_len}, {model_cfg.dtype})")
    print(f"run directory: {out}")

    def report(trainer, event, info):
        if event == "eval":
            print(f"step {info['step']:>6}: validation loss {info['val_loss']:.4f}", file=sys.stderr if
                  not args.no_progress else sys.stdout, flush=True)

    trainer.callbacks.append(report)
    t0 = time.perf_counter()
    try:
        history = trainer.train()
    except TrainingDiverged as exc:
        print(f"cllm: training stopped: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t0
    val = history.val_loss[-1]
    plot_history(history, out / "loss.png", title=f"{out.name}: loss")
    print(f"final validation loss {val:.4f} (mean over all {n_val} windows of {train_cfg.seq_len} tokens "
          f"of the validation split) at step {trainer.step}")
    tps = np.median(history.tokens_per_s) if history.tokens_per_s else float("nan")
    print(f"time: {elapsed:.1f} s for {len(history.step)} steps ({tps:,.0f} tokens/s median)")
    print(f"wrote {out}/loss.png and the checkpoint {out}/latest")
    if args.sample_tokens:
        from .generate import generate

        prompt = ids[:1]  # the corpus's first token: always in the vocabulary
        sample = generate(model, prompt, args.sample_tokens, temperature=0.8, top_k=None, seed=args.seed)
        print("sample:\n" + tok.decode(sample[0]))
    return 0


# ---------------------------------------------------------------------------------------------- generate
def cmd_generate(args):
    from .checkpoint import load_checkpoint
    from .config import ModelConfig
    from .generate import generate
    from .model import Model
    from .tokenizer import tokenizer_from_dict

    ck = load_checkpoint(args.checkpoint)
    if ck.tokenizer is None:
        raise UserError(f"{args.checkpoint}: the checkpoint has no tokenizer.json")
    tok = tokenizer_from_dict(ck.tokenizer)
    if args.prompt == "":
        raise UserError("--prompt must not be empty")
    try:
        prompt = tok.encode(args.prompt)
    except ValueError as exc:
        raise UserError(f"--prompt: {exc}") from None
    model = Model(ModelConfig.from_dict(ck.model_cfg), seed=0)
    model.load_params(ck.params)
    temperature = 0.0 if args.greedy else args.temperature
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
    if args.compare == "torch":
        from .lab.compare_torch import compare_torch

        return compare_torch(repeats=args.repeats, configs=args.configs)
    from .lab.bench import run_bench

    return run_bench(repeats=args.repeats, configs=args.configs)


def cmd_experiment(args):
    if args.name == "grokking":
        from .lab.grokking import run_experiment as run_grokking

        return run_grokking(seeds=args.seeds, steps=args.steps, out=args.out)
    from .lab.lattice_experiment import run_experiment

    return run_experiment(args.name, seeds=args.seeds, steps=args.steps, out=args.out)


def build_parser():
    from .config import ACTIVATIONS

    p = _Parser(prog="cllm", description="A small GPT-style language model in numpy.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train a model (default: character level on the built-in corpus)")
    _add_train_args(t)
    t.set_defaults(func=cmd_train)
    g = sub.add_parser("generate", help="sample text from a checkpoint")
    g.add_argument("--checkpoint", required=True, help="a run directory or a checkpoint directory")
    g.add_argument("--prompt", required=True)
    g.add_argument("--tokens", type=_nonneg_int, default=200)
    g.add_argument("--temperature", type=_float, default=0.8)
    g.add_argument("--top-k", type=_positive_int, default=None)
    g.add_argument("--top-p", type=_float, default=None)
    g.add_argument("--greedy", action="store_true")
    g.add_argument("--seed", type=_nonneg_int, default=0)
    g.set_defaults(func=cmd_generate)
    c = sub.add_parser("gradcheck", help="check every gradient of a small float64 model by finite differences")
    c.add_argument("--activation", choices=list(ACTIVATIONS), default="gelu")
    c.add_argument("--untied", action="store_true")
    c.add_argument("--dropout", type=_float, default=0.0)
    c.add_argument("--embedding", choices=["learned", "lattice"], default="learned")
    c.add_argument("--attention-bias", choices=["none", "lattice"], default="none")
    c.add_argument("--max-entries", type=_positive_int, default=None, help="check a random subset per tensor")
    c.add_argument("--seed", type=_nonneg_int, default=0)
    c.set_defaults(func=cmd_gradcheck)
    b = sub.add_parser("bench", help="time training steps against the machine's matmul peak")
    b.add_argument("--repeats", type=_positive_int, default=20)
    b.add_argument("--configs", nargs="+", choices=["seed", "small"], default=["seed", "small"])
    b.add_argument("--compare", choices=["torch"], default=None, help="also time the PyTorch reference")
    b.set_defaults(func=cmd_bench)
    e = sub.add_parser("experiment", help="run a measured experiment (lattice: do prime embeddings help? "
                                          "grokking: do clock embeddings help modular addition?)")
    e.add_argument("name", choices=["lattice", "grokking"])
    e.add_argument("--seeds", type=_positive_int, default=5)
    e.add_argument("--steps", type=_positive_int, default=None)
    e.add_argument("--out", default="figures")
    e.set_defaults(func=cmd_experiment)
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
    except KeyboardInterrupt:
        print("cllm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
