"""The grokking experiment: ``python -m cllm experiment grokking [--seeds 5] [--steps N] [--out figures]``.

Where should a clock embedding help, if anywhere? In modular arithmetic a small transformer's
embedding provably becomes a clock (Nanda et al. 2023: cos/sin(2 pi k a / p) at a handful of key
frequencies k). Here the model is *given* a clock, through the same E = F W + R machinery as the prime
embeddings (:mod:`cllm.lattice.model`; F is passed to :class:`cllm.model.Model` as ``features``), and
compared with the learned embedding and with a random F of the same rank:

==============  ============================================================================
``learned``     the ordinary learned embedding table
``clock``       F = cos, sin (2 pi k a / m) for every frequency k = 1 .. m // 2 (rank m - 1)
``crt``         composite m only: one clock per prime power of m (60 = 4 * 3 * 5: rank 3 + 2 + 4 = 9)
``random``      control: a fixed random Gaussian F, rank m - 1 (the clock's); unit-RMS columns
``random-crt``  control for ``crt``: random Gaussian F of the CRT clocks' rank
==============  ============================================================================

The "=" token's feature row is 0 in every F (its embedding is its row of R). With every frequency F is
an orthogonal basis of the zero-mean embeddings, so ``clock`` can represent exactly what ``learned``
can; what changes is the coordinate system AdamW works in (its per-coordinate step sizes) and where
training starts. ``random`` has the same rank in a random coordinate system.

The task: a + b mod m, tokens ``a b =``, loss at the answer position only (:mod:`cllm.lab.modular`),
full batch, AdamW with weight decay 1.0 on every matrix (embeddings and W included), betas
(0.9, 0.98), 10 linear warm-up steps then a constant rate, as Nanda et al. Their model is larger
(d_model 128, MLP 512, lr 1e-3, p = 113, 30% of the pairs, no LayerNorm, trained for 40k steps); on a
2-core machine within 30 minutes this experiment uses a smaller one (``MODEL``: 1 layer, 4 heads,
d_model 32, MLP 128, ReLU, untied head, cllm's pre-LayerNorm block), a smaller prime and a larger
learning rate (``SETTINGS``). Seed s is the model seed and the split seed: every variant of a seed
trains on the same pairs from the same initial weights of everything but the embedding.

Measured per run, on a grid of ``eval_every`` steps: training and validation accuracy and loss; the
steps to 99% training accuracy (memorisation) and to 99% validation accuracy (generalisation; the
difference is the grokking delay); the final accuracies; the Fourier spectrum of the numbers' rows of
the embedding E (:func:`cllm.lab.modular.fourier_spectrum`) at the end, with its top five frequencies
and their share of the energy, and that share on the grid. Written to ``out``: ``grokking.json``
(everything, rewritten after each run), ``grokking.md`` (the table), ``grokking_curves.png`` and
``grokking_spectra.png``.
"""
from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .._validate import check_int
from .report import log as log_line, write_json
from .stats import compare, fmt_mean_std, mean_std

BASELINE = "learned"
VARIANT_FEATURES = {"learned": None, "clock": "clock", "crt": "crt", "random": "random", "random-crt": "random"}
MODEL = dict(n_layers=1, n_heads=4, d_model=32, d_ff=128, activation="relu", tie_weights=False, dtype="float32")
OPTIM = dict(lr=3e-3, weight_decay=1.0, betas=(0.9, 0.98), warmup=10)
# the moduli, their training fractions and step budgets, and the variants run for each
# (measured on the shared 2-core machine, two runs side by side: about 30 s per m = 47 run, 60-100 s per
# m = 60 run, 5-10 s per m = 12 run; 5 seeds of everything about 20-25 minutes)
SETTINGS = {
    60: dict(train_frac=0.4, steps=1200, variants=("learned", "clock", "crt", "random", "random-crt")),
    47: dict(train_frac=0.4, steps=1500, variants=("learned", "clock", "random")),
    12: dict(train_frac=0.5, steps=1500, variants=("learned", "clock", "crt", "random", "random-crt")),
}
THRESHOLD = 0.99
LATE = 0.9  # "late" validation accuracy: the mean over the grid points of the last 10% of the steps


def _is_composite(m):
    return any(m % d == 0 for d in range(2, int(m ** 0.5) + 1))


def decay_matrices(name, array) -> bool:
    """Weight decay on every matrix, embeddings included (Nanda et al. decay every parameter; here the
    LayerNorm gains and the biases are left alone)."""
    return array.ndim == 2


def build_model(m: int, variant: str, seed: int, model: Optional[dict] = None):
    """The model of one run: ``MODEL`` (updated by ``model``) for m + 1 tokens, with the variant's F."""
    from ..config import ModelConfig
    from ..lattice.features import crt_clock_features
    from ..model import Model
    from .modular import task_features

    if variant not in VARIANT_FEATURES:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANT_FEATURES)}")
    kind = VARIANT_FEATURES[variant]
    if variant in ("crt", "random-crt") and not _is_composite(m):
        raise ValueError(f"variant {variant!r} needs a composite modulus, got {m}")
    kw = dict(MODEL, vocab_size=m + 1, max_seq_len=3)
    kw.update(model or {})
    F = None
    if kind is not None:
        rank = crt_clock_features(np.arange(m), m).shape[1] if variant == "random-crt" else None
        F = task_features(m, kind, seed=seed, rank=rank)                 # (m + 1, k)
        kw.update(embedding="lattice", lattice_features=F.shape[1])
    return Model(ModelConfig(**kw), seed=seed, features=F)


def _first(steps, values, threshold=THRESHOLD):
    for s, v in zip(steps, values):
        if v >= threshold:
            return int(s)
    return None


def run_one(m: int, variant: str, seed: int, steps: int, train_frac: float = 0.4, op: str = "add",
            eval_every: Optional[int] = None, model: Optional[dict] = None, optim: Optional[dict] = None,
            keep_spectra: bool = False) -> dict:
    """Train one model full-batch and return its measurements (curves, thresholds, spectrum, time).
    ``keep_spectra``: also keep the embedding's whole spectrum at every grid step (``curve["spectrum"]``)."""
    from ..optim import AdamW, lr_at
    from .modular import accuracy, fourier_spectrum, make_dataset, top_frequencies

    t0 = time.perf_counter()
    o = dict(OPTIM, **(optim or {}))
    eval_every = eval_every or max(1, steps // 100)
    data = make_dataset(m, op, train_frac, seed)
    net = build_model(m, variant, seed, model)
    opt = AdamW(net.params, lr=o["lr"], betas=tuple(o["betas"]), weight_decay=o["weight_decay"],
                decay=decay_matrices)
    grads = net.zeros_like_params()
    curve = dict(step=[], train_loss=[], train_acc=[], val_loss=[], val_acc=[], top5_share=[])
    for step in range(steps + 1):
        logits, loss, acts = net.forward(data.x_train, data.y_train)     # (N, 3, V), the answer's loss
        if not math.isfinite(loss):
            raise RuntimeError(f"m={m} {variant} seed {seed}: loss {loss} at step {step}")
        if step % eval_every == 0 or step == steps:
            vlogits, vloss, _ = net.forward(data.x_val, data.y_val, train=False)
            curve["step"].append(step)
            curve["train_loss"].append(round(float(loss), 5))
            curve["train_acc"].append(round(accuracy(logits, data.y_train), 5))
            curve["val_loss"].append(round(float(vloss), 5))
            curve["val_acc"].append(round(accuracy(vlogits, data.y_val), 5))
            spec = fourier_spectrum(net.embedding_matrix(), m)               # (m // 2 + 1,)
            curve["top5_share"].append(round(top_frequencies(spec)[1], 4))
            if keep_spectra:
                curve.setdefault("spectrum", []).append([round(float(e), 6) for e in spec])
        if step == steps:
            break
        net.backward(acts, out=grads)
        opt.step(grads, lr=lr_at(step, o["lr"], o["lr"], o["warmup"], steps))  # warm-up, then constant
    spectrum = fourier_spectrum(net.embedding_matrix(), m)
    top, share = top_frequencies(spectrum)
    t99, v99 = _first(curve["step"], curve["train_acc"]), _first(curve["step"], curve["val_acc"])
    return dict(m=m, op=op, variant=variant, seed=seed, steps=steps, train_frac=train_frac,
                n_train=int(len(data.x_train)), n_val=int(len(data.x_val)), eval_every=eval_every, curve=curve,
                steps_to_train99=t99, steps_to_val99=v99,
                grokking_delay=None if t99 is None or v99 is None else v99 - t99,
                final_train_acc=curve["train_acc"][-1], final_val_acc=curve["val_acc"][-1],
                late_val_acc=round(float(np.mean([v for s, v in zip(curve["step"], curve["val_acc"])
                                                  if s >= LATE * steps])), 5),
                spectrum=[round(float(e), 6) for e in spectrum], top5=top, top5_share=round(share, 4),
                n_params=int(net.num_params()), seconds=round(time.perf_counter() - t0, 2))


def _run_job(job):
    """One run in a worker process, BLAS on one thread (the runs themselves share out the cores)."""
    from ..parallel import blas_threads

    with blas_threads(1):
        return run_one(**job)


# ----------------------------------------------------------------------------------------- summary
def _ms_or_none(values):
    v = [x for x in values if x is not None]
    return dict(mean_std=mean_std(v), reached=len(v), n=len(values))


def summarize(runs: list) -> dict:
    """Per modulus and variant: mean/std over seeds, and paired (same seed) differences to learned."""
    out = {}
    for m in sorted({r["m"] for r in runs}):
        mr = [r for r in runs if r["m"] == m]
        base = {r["seed"]: r for r in mr if r["variant"] == BASELINE}
        rows = {}
        for variant in dict.fromkeys(r["variant"] for r in mr):
            vr = sorted((r for r in mr if r["variant"] == variant), key=lambda r: r["seed"])
            row = dict(n=len(vr), seeds=[r["seed"] for r in vr],
                       train99=_ms_or_none([r["steps_to_train99"] for r in vr]),
                       val99=_ms_or_none([r["steps_to_val99"] for r in vr]),
                       delay=_ms_or_none([r["grokking_delay"] for r in vr]),
                       final_train_acc=mean_std([r["final_train_acc"] for r in vr]),
                       final_val_acc=mean_std([r["final_val_acc"] for r in vr]),
                       late_val_acc=mean_std([r["late_val_acc"] for r in vr]),
                       top5_share=mean_std([r["top5_share"] for r in vr]),
                       top5=[r["top5"] for r in vr], seconds=mean_std([r["seconds"] for r in vr]))
            pairs = [(r, base[r["seed"]]) for r in vr if r["seed"] in base]
            d_steps = [r["steps_to_val99"] - b["steps_to_val99"] for r, b in pairs
                       if r["steps_to_val99"] is not None and b["steps_to_val99"] is not None]
            d_acc = [r["final_val_acc"] - b["final_val_acc"] for r, b in pairs]
            row["delta_val99"] = mean_std(d_steps) + (len(d_steps),)
            row["delta_val_acc"] = mean_std(d_acc) + (len(d_acc),)
            d_late = [r["late_val_acc"] - b["late_val_acc"] for r, b in pairs]
            row["delta_late_val_acc"] = mean_std(d_late) + (len(d_late),)
            rows[variant] = row
        first = mr[0]
        out[str(m)] = dict(m=m, steps=first["steps"], train_frac=first["train_frac"], n_train=first["n_train"],
                           n_val=first["n_val"], eval_every=first["eval_every"], variants=rows)
    return out


def _steps_cell(d):
    if d["reached"] == 0:
        return f"not reached (0/{d['n']})"
    m, s = d["mean_std"]
    cell = f"{m:.0f} ± {s:.0f}"
    return cell + (f" ({d['reached']}/{d['n']})" if d["reached"] < d["n"] else "")


def _acc_verdict(delta):
    """compare() judges a loss (lower is better); an accuracy is better when higher."""
    mean, std, n = delta
    return compare((-mean, std, n))


def format_table(summary: dict) -> str:
    head = ["m", "variant", "n", "steps to 99% train", "steps to 99% val", "Δ steps to 99% val (paired)",
            "final train acc", "final val acc", "late val acc", "Δ late val acc (paired)", "top-5 energy share",
            "top-5 frequencies (seed 0)", "s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, block in summary.items():
        for variant, row in block["variants"].items():
            ds, da = row["delta_val99"], row["delta_late_val_acc"]
            base = variant == BASELINE
            dsc = "—" if base else ("n/a" if ds[2] == 0 else f"{ds[0]:+.0f} ± {ds[1]:.0f} (n={ds[2]}, {compare(ds)})")
            dac = "—" if base else f"{da[0]:+.3f} ± {da[1]:.3f} ({_acc_verdict(da)})"
            cells = [key, variant, str(row["n"]), _steps_cell(row["train99"]), _steps_cell(row["val99"]), dsc,
                     fmt_mean_std(row["final_train_acc"]), fmt_mean_std(row["final_val_acc"]),
                     fmt_mean_std(row["late_val_acc"]), dac,
                     fmt_mean_std(row["top5_share"], 2), ", ".join(map(str, row["top5"][0])),
                     f"{row['seconds'][0]:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict(summary: dict) -> str:
    """One sentence per modulus: each variant's generalisation against learned's, 2-SE rule."""
    out = []
    for key, block in summary.items():
        rows = block["variants"]
        if BASELINE not in rows:
            continue
        b = rows[BASELINE]
        parts = []
        for variant, row in rows.items():
            if variant == BASELINE:
                continue
            ds, da = row["delta_val99"], row["delta_late_val_acc"]
            if ds[2] == 0:
                steps = (f"reaches 99% validation accuracy in {row['val99']['reached']}/{row['n']} seeds "
                         f"(no seed pair where both reach it: steps not compared)")
            else:
                steps = (f"reaches 99% validation accuracy {ds[0]:+.0f} ± {ds[1]:.0f} steps relative to learned "
                         f"({compare(ds)}, {ds[2]} paired seeds, {row['val99']['reached']}/{row['n']} reach it)")
            parts.append(f"{variant} {steps}; its late validation accuracy is {_acc_verdict(da)} "
                         f"({da[0]:+.3f} ± {da[1]:.3f})")
        reach = (f"at {_steps_cell(b['val99'])} steps" if b["val99"]["reached"] else "within the budget")
        out.append(f"m = {key}: learned reaches 99% validation accuracy in {b['val99']['reached']}/{b['n']} seeds "
                   f"({reach}; 99% training accuracy at {_steps_cell(b['train99'])}); "
                   + "; ".join(parts) + ".")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------- driver
def load_results(path) -> dict:
    """Read a ``grokking.json`` and (re)compute its summary from the runs it holds."""
    payload = json.loads(Path(path).read_text())
    payload["summary"] = summarize(payload["runs"]) if payload["runs"] else {}
    return payload


def plan(settings: dict, seeds: int, steps: Optional[int] = None) -> list:
    """The runs, seed by seed (every modulus and variant of seed 0 first)."""
    jobs = []
    for seed in range(seeds):
        for m, st in settings.items():
            for variant in st["variants"]:
                jobs.append(dict(m=int(m), variant=variant, seed=seed, steps=steps or st["steps"],
                                 train_frac=st["train_frac"]))
    return jobs


def run_grokking(seeds: int = 5, steps: Optional[int] = None, out="figures", settings: Optional[dict] = None,
                 workers: Optional[int] = None, model: Optional[dict] = None, optim: Optional[dict] = None,
                 eval_every: Optional[int] = None, log: Optional[Callable] = None, plot: bool = True) -> dict:
    """Run the experiment; returns the JSON payload (config, runs, summary). ``steps`` overrides every
    modulus's budget; ``workers`` processes run the runs side by side (default: one per core, at most 2;
    1 runs them in this process)."""
    check_int("seeds", seeds, 1)
    if steps is not None:
        check_int("steps", steps, 1)
    settings = SETTINGS if settings is None else settings
    for m, st in settings.items():
        for v in st["variants"]:
            if v not in VARIANT_FEATURES:
                raise ValueError(f"unknown variant {v!r}; expected some of {', '.join(VARIANT_FEATURES)}")
            if v in ("crt", "random-crt") and not _is_composite(int(m)):
                raise ValueError(f"variant {v!r} needs a composite modulus, got {m}")
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    log = log or log_line
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "grokking.json"
    jobs = plan(settings, seeds, steps)
    extra = dict(model=model, optim=optim, eval_every=eval_every)
    for j in jobs:
        j.update({k: v for k, v in extra.items() if v is not None})
    payload = dict(experiment="grokking",
                   config=dict(seeds=list(range(seeds)), settings={str(m): dict(st, variants=list(st["variants"]))
                                                                   for m, st in settings.items()},
                               steps_override=steps, model=dict(MODEL, **(model or {})), optim=dict(OPTIM, **(optim or {})),
                               op="add", threshold=THRESHOLD, workers=workers,
                               note=("full batch; seed s = model seed = split seed; AdamW weight decay on every "
                                     "matrix; lr: 10 warm-up steps then constant")),
                   runs=[], complete=False)
    t_start = time.perf_counter()
    log(f"grokking: {len(jobs)} runs ({seeds} seeds; " + "; ".join(
        f"m={m}: {', '.join(st['variants'])}, {steps or st['steps']} steps, {st['train_frac']:.0%} of pairs"
        for m, st in settings.items()) + f") on {workers} worker process(es)")

    def finished(r):
        payload["runs"].append(r)
        payload["wall_s"] = round(time.perf_counter() - t_start, 1)
        write_json(json_path, payload)
        t, v = r["steps_to_train99"], r["steps_to_val99"]
        log(f"run {len(payload['runs']):2d}/{len(jobs)}  m={r['m']:<4d} {r['variant']:10s} seed {r['seed']}  "
            f"99% train at {t if t is not None else '-':>5}  99% val at {v if v is not None else '-':>5}  "
            f"final val acc {r['final_val_acc']:.3f}  top-5 share {r['top5_share']:.2f}  {r['seconds']:.0f} s  "
            f"[{payload['wall_s']:.0f} s]")

    if workers == 1:
        for job in jobs:
            finished(_run_job(job))
    else:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_run_job, job) for job in jobs]
            for fut in as_completed(futures):
                finished(fut.result())
    order = {(j["m"], j["variant"], j["seed"]): i for i, j in enumerate(jobs)}
    payload["runs"].sort(key=lambda r: order[(r["m"], r["variant"], r["seed"])])
    payload["complete"] = True
    payload["wall_s"] = round(time.perf_counter() - t_start, 1)
    payload["summary"] = summarize(payload["runs"])
    write_json(json_path, payload)
    table, conclusion = write_reports(payload, out, plot=plot)
    log("")
    log(table)
    log(conclusion)
    log(f"wrote {json_path}, {out / 'grokking.md'}"
        + (f", {out / 'grokking_curves.png'}, {out / 'grokking_spectra.png'}" if plot else "")
        + f" ({payload['wall_s']:.0f} s)")
    return payload


def write_reports(payload: dict, out, plot: bool = True) -> tuple:
    """Write ``grokking.md`` (and the two figures) into ``out`` from a payload. Returns (table, verdict)."""
    from .._atomic import atomic_write_text

    out = Path(out)
    cfg = payload["config"]
    summary = payload.get("summary") or summarize(payload["runs"])
    table, conclusion = format_table(summary), verdict(summary)
    seeds = len(cfg["seeds"])
    mdl, opt = cfg["model"], cfg["optim"]
    status = "" if payload.get("complete") else f"**Partial results: {len(payload['runs'])} runs.**\n\n"
    setups = "; ".join(f"m = {k}: {b['n_train']} training / {b['n_val']} validation pairs "
                       f"({b['train_frac']:.0%}), {b['steps']} full-batch steps, accuracy every {b['eval_every']} steps"
                       for k, b in summary.items())
    md = ["# Grokking and clock embeddings (`python -m cllm experiment grokking"
          + (f" --seeds {seeds}" if seeds != 5 else "") + (f" --steps {cfg['steps_override']}" if cfg["steps_override"] else "")
          + "`)", "", status +
          f"a + b mod m, tokens `a b =`, loss at the answer only. {seeds} seeds per variant (seed s = model seed = "
          f"split seed). Model: {mdl['n_layers']} layer, {mdl['n_heads']} heads, d_model {mdl['d_model']}, MLP "
          f"{mdl['d_ff']}, {mdl['activation']}, {'tied' if mdl['tie_weights'] else 'untied'} head, {mdl['dtype']}. "
          f"AdamW lr {opt['lr']:g} ({opt['warmup']} warm-up steps, then constant), betas {tuple(opt['betas'])}, "
          f"weight decay {opt['weight_decay']:g} on every matrix. {setups}.", "",
          "Variants (E = F W + R, F fixed): `clock` F = cos, sin(2πka/m) for every k (rank m − 1); `crt` one clock "
          "per prime power of m (60: mod 4, 3, 5, rank 9); `random` / `random-crt` a random Gaussian F of the "
          "same rank as `clock` / `crt`. Mean ± std over seeds (ddof 1); a steps column averages the seeds that "
          "reach 99% (count shown when not all do); Δ is variant minus learned for the same seed, judged by the "
          "2-standard-error rule (for steps lower is better, for accuracy higher). 'Final' is the last step; 'late val "
          "acc' is the mean validation accuracy over the last 10% of the steps (full-batch AdamW at a constant rate "
          "has loss spikes, and one of them can sit on the last step). Top-5 energy share: of the numbers' embedding rows' Fourier energy at "
          "frequencies k ≥ 1 (k and m − k together), the share of the five largest, at the end.", "",
          table, "Result: " + conclusion.replace("\n", "\n\n"), ""]
    if payload.get("wall_s") is not None:
        md += [f"Wall time of the run that wrote these numbers: {payload['wall_s']:.0f} s "
               f"({cfg['workers']} worker processes).", ""]
    atomic_write_text(out / "grokking.md", "\n".join(md))
    if plot:
        from ..plots import close, plot_grokking_curves, plot_grokking_spectra

        close(plot_grokking_curves(payload["runs"], out / "grokking_curves.png"))
        close(plot_grokking_spectra(payload["runs"], out / "grokking_spectra.png"))
    return table, conclusion


def run_experiment(seeds: int = 5, steps: Optional[int] = None, out="figures") -> int:
    """The command line's ``experiment grokking``; returns the exit status."""
    run_grokking(seeds=seeds, steps=steps, out=out)
    return 0
