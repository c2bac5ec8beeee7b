"""Every plot of the package: the command line's loss curve, the explorer's live and compared runs,
the step-through's heat maps, the lattice experiment's figure, and the notebooks' figure files.

The package's one matplotlib room: matplotlib is imported only when a plot is made. Functions that
draw take an ``ax`` (or axes) and return it, so a notebook can place them in its own figures;
:func:`figure_png` renders one to PNG bytes without pyplot (safe from a background thread, as the
widgets need).
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

# One colour for one meaning across every figure of the course: the residual stream (the sum that
# runs through all blocks) and what a branch (attention, MLP, a head) computes from it.
RESIDUAL_COLOUR = "tab:blue"
BRANCH_COLOUR = "tab:orange"


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "widget", "ipympl"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history, path=None, ax=None, title="loss", label=None):
    """Training loss per step (thin) and validation loss (markers) of a :class:`cllm.train.History`.

    With ``path`` the figure is written as PNG (folders created, atomically: see :func:`write_png`)
    and closed; returns the axes.
    """
    plt = _plt()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    prefix = f"{label} " if label else ""
    ax.plot(history.step, history.train_loss, lw=0.8, alpha=0.8, label=prefix + "train")
    if history.val_loss:
        ax.plot(history.val_step, history.val_loss, "o-", ms=4, label=prefix + "validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if path is not None:
        ax.figure.tight_layout()
        try:
            write_png(ax.figure, path)
        finally:
            if own:
                plt.close(ax.figure)
    return ax


def write_png(fig, path, **savefig_kwargs) -> Path:
    """Render ``fig`` as PNG and write it to ``path`` atomically (folders created): the image is
    rendered in memory first, so a failure (a full disk) leaves the old file or none, never half a
    PNG."""
    from ._atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


FIGURES_ENV = "CLLM_WRITE_FIGURES"  # set to 1 when re-rendering the notebooks for a commit


def save_figure(fig, path, dpi=100) -> "Path | None":
    """Write ``fig`` as a PNG at ``path``, but only when the environment variable
    ``CLLM_WRITE_FIGURES`` is ``1``; returns the path written, or None.

    The notebooks call this for every figure that the README and ``figures/`` show. Running them as
    tests (``python -m pytest``) therefore leaves the tracked figures as they are, while the
    re-render (``CLLM_WRITE_FIGURES=1 jupyter nbconvert --execute ...``) refreshes them. The file is
    written atomically (:func:`write_png`), so an interrupted run never leaves half a PNG.
    """
    import os

    if os.environ.get(FIGURES_ENV) != "1":
        return None
    return write_png(fig, path, dpi=dpi, bbox_inches="tight")


def figure_png(draw, figsize=(5.5, 3.6), dpi=90, margins=(0.13, 0.97, 0.14, 0.91)) -> bytes:
    """PNG bytes of a figure drawn by ``draw(ax)``, with matplotlib's Agg canvas and no pyplot (so no
    global state: safe to call from a training thread). ``margins``: (left, right, bottom, top) in
    figure fractions, fixed because that is cheaper than ``tight_layout``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    draw(ax)
    left, right, bottom, top = margins
    fig.subplots_adjust(left=left, right=right, bottom=bottom, top=top)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ------------------------------------------------------------------------------- the explorer's runs
def smooth(values, window: int = 10) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or window <= 1:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    n = np.arange(1, v.size + 1)
    lo = np.maximum(0, n - window)
    return (c[n] - c[lo]) / (n - lo)


def plot_live(ax, history, title="this run"):
    """A run's training loss (thin line) and validation loss (dots) on ``ax``."""
    if history is not None and history.step:
        ax.plot(history.step, history.train_loss, lw=0.8, color="tab:blue", alpha=0.8, label="train")
    if history is not None and history.val_loss:
        ax.plot(history.val_step, history.val_loss, "o-", ms=4, color="tab:orange", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="upper right", fontsize=8)
    return ax


def plot_runs(ax, runs, title="runs compared", train_window: int = 10):
    """Finished runs (objects with ``history`` and ``label``) on one axes: validation loss (solid,
    dots) and the smoothed training loss (dotted) in the run's colour, labelled ``run k: <label>``."""
    for k, run in enumerate(runs, 1):
        color = f"C{(k - 1) % 10}"
        h = run.history
        if h.step:
            ax.plot(h.step, smooth(h.train_loss, train_window), ":", lw=1, color=color)
        if h.val_loss:
            ax.plot(h.val_step, h.val_loss, "o-", ms=3, color=color, label=f"run {k}: {run.label}")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (solid), train (dotted)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(loc="upper right", fontsize=7)
    return ax


# ------------------------------------------------------------------------------- heat maps
def plot_heatmap_2d(ax, a2, title, rows="", cols="", signed=False, cmap=None, colorbar=True):
    """A 2-D array as a heat map on ``ax``: a sequential colour map, or with ``signed`` a diverging one
    centred on zero (so the sign of each entry can be read). Returns the image."""
    a2 = np.asarray(a2, dtype=np.float64)
    if signed:
        lim = float(np.abs(a2).max()) or 1.0
        im = ax.imshow(a2, aspect="auto", cmap=cmap or "RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    else:
        im = ax.imshow(a2, aspect="auto", cmap=cmap or "viridis", interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(rows, fontsize=8)
    ax.set_xlabel(cols, fontsize=8)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return im


# ------------------------------------------------------------------------------- the experiments
def _panels(plt, n: int, axes=None):
    """``axes`` if given, else a row of ``n`` new panels (one per level or modulus)."""
    if axes is None:
        axes = plt.subplots(1, n, figsize=(6.2 * n, 4.2), dpi=100, squeeze=False)[1][0]
    return axes



def plot_lattice_experiment(runs: list, summary: dict, path=None, axes=None):
    """Validation (subset) loss against step: mean line and +-1 std band per variant, one panel per
    level, the level's threshold dashed (see :mod:`cllm.lab.lattice_experiment`). Saved as PNG when
    ``path`` is given. Returns the figure.

    The y-axis spans every band from the first evaluation after step 0 to the end, so the early steps
    (where the factorised embeddings lead) stay in view; only step 0, the same ``log V`` for every
    variant, may run off the top."""
    plt = _plt()
    levels = list(summary)
    axes = _panels(plt, len(levels), axes)
    fig = axes[0].figure
    colors = {"learned": "tab:blue", "lattice": "tab:orange", "lattice+attn": "tab:green", "random-F": "tab:gray"}
    styles = {"lattice+attn": "--", "random-F": ":"}   # lattice+attn can lie on top of lattice
    for ax, level in zip(axes, levels):
        lo, hi = math.inf, -math.inf
        for variant in summary[level]["variants"]:
            vr = [r for r in runs if r["level"] == level and r["variant"] == variant]
            steps = np.array(vr[0]["val_step"])
            curves = np.array([r["val_loss"] for r in vr])                # (seeds, points)
            mean, std = curves.mean(axis=0), curves.std(axis=0, ddof=1) if len(vr) > 1 else np.zeros(len(steps))
            c = colors.get(variant)
            ax.plot(steps, mean, color=c, ls=styles.get(variant, "-"), lw=1.6, label=f"{variant} (n={len(vr)})")
            ax.fill_between(steps, mean - std, mean + std, color=c, alpha=0.2, lw=0)
            shown = steps > steps[0] if len(steps) > 1 else np.ones(len(steps), dtype=bool)   # all but step 0
            lo, hi = min(lo, float((mean - std)[shown].min())), max(hi, float((mean + std)[shown].max()))
        thr = summary[level]["threshold"]
        ax.axhline(thr, color="gray", ls="--", lw=1, label=f"threshold {thr:.2f}")
        if math.isfinite(lo) and hi > lo:
            pad = 0.05 * (hi - lo)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(f"{level} level")
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (first windows, nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Does the lattice help? mean ± 1 std over seeds, same data order per seed")
    fig.tight_layout()
    if path is not None:
        write_png(fig, path, dpi=100, bbox_inches="tight")
    return fig


# ------------------------------------------------------------------------------- the grokking experiment
GROKKING_COLORS = {"learned": "tab:blue", "clock": "tab:orange", "crt": "tab:green", "random": "tab:gray",
                   "random-crt": "tab:olive"}


def _by_modulus(runs):
    out = {}
    for r in runs:
        out.setdefault(r["m"], {}).setdefault(r["variant"], []).append(r)
    return dict(sorted(out.items()))


def plot_grokking_curves(runs: list, path=None, axes=None):
    """Training (dashed) and validation (solid) accuracy against step, mean over seeds with a band from
    the seeds' minimum to maximum, one panel per modulus (see :mod:`cllm.lab.grokking`). Returns the figure."""
    plt = _plt()
    groups = _by_modulus(runs)
    axes = _panels(plt, len(groups), axes)
    fig = axes[0].figure
    for ax, (m, variants) in zip(axes, groups.items()):
        for variant, vr in variants.items():
            steps = np.array(vr[0]["curve"]["step"])
            c = GROKKING_COLORS.get(variant)
            for key, ls in (("train_acc", "--"), ("val_acc", "-")):
                curves = np.array([r["curve"][key] for r in vr])            # (seeds, points)
                ax.plot(steps, curves.mean(axis=0), color=c, ls=ls, lw=1.5 if key == "val_acc" else 1.0,
                        label=f"{variant} (n={len(vr)})" if key == "val_acc" else None)
                if key == "val_acc":
                    ax.fill_between(steps, curves.min(axis=0), curves.max(axis=0), color=c, alpha=0.15, lw=0)
        ax.axhline(0.99, color="gray", ls=":", lw=1)
        r0 = next(iter(variants.values()))[0]
        ax.set_title(f"a + b mod {m}: {r0['n_train']} training pairs ({r0['train_frac']:.0%})")
        ax.set_xlabel("full-batch step")
        ax.set_ylabel("accuracy (solid: validation, dashed: training)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("Memorise, then generalise: mean over seeds, band = min..max of validation accuracy")
    fig.tight_layout()
    if path is not None:
        write_png(fig, path, dpi=100, bbox_inches="tight")
    return fig


def plot_spectrum(ax, spectrum, label=None, color=None, normalize=True):
    """The Fourier energy of an embedding per frequency k = 1 .. m // 2 (entry 0, the mean, left out),
    as a share of the total when ``normalize``; returns the axes."""
    s = np.asarray(spectrum, dtype=np.float64)[1:]
    if normalize and s.sum() > 0:
        s = s / s.sum()
    k = np.arange(1, s.size + 1)
    ax.plot(k, s, "o-", ms=2.5, lw=0.9, color=color, label=label)
    ax.set_xlabel("frequency k")
    ax.set_ylabel("share of the embedding's energy" if normalize else "energy")
    ax.grid(alpha=0.3)
    return ax


def plot_grokking_spectra(runs: list, path=None, axes=None):
    """Top row: the final Fourier spectrum of seed 0's embedding per variant, one panel per modulus.
    Bottom row: the share of the energy in the top five frequencies against step (mean over seeds).
    Returns the figure."""
    plt = _plt()
    groups = _by_modulus(runs)
    if axes is None:
        fig, axes = plt.subplots(2, len(groups), figsize=(6.2 * len(groups), 7.4), dpi=100, squeeze=False)
    fig = axes[0][0].figure
    for col, (m, variants) in enumerate(groups.items()):
        top, bottom = axes[0][col], axes[1][col]
        for variant, vr in variants.items():
            c = GROKKING_COLORS.get(variant)
            r0 = min(vr, key=lambda r: r["seed"])
            plot_spectrum(top, r0["spectrum"], label=f"{variant}: top {', '.join(map(str, r0['top5']))}", color=c)
            share = np.array([r["curve"]["top5_share"] for r in vr])
            bottom.plot(vr[0]["curve"]["step"], share.mean(axis=0), color=c, lw=1.5, label=variant)
        top.set_title(f"mod {m}: embedding spectrum at the end (seed 0)")
        top.legend(fontsize=7)
        bottom.set_title(f"mod {m}: energy share of the top 5 frequencies (mean over seeds)")
        bottom.set_xlabel("full-batch step")
        bottom.set_ylabel("top-5 share")
        bottom.set_ylim(0, 1.02)
        bottom.axhline(5 / (m // 2), color="gray", ls=":", lw=1, label="flat spectrum")
        bottom.grid(alpha=0.3)
        bottom.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        write_png(fig, path, dpi=100, bbox_inches="tight")
    return fig


def close(fig) -> None:
    """Release a figure made by pyplot (the lattice experiment's, the command line's)."""
    _plt().close(fig)
