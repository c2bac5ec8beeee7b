"""Plots for the command line and the notebooks. matplotlib is imported only when a plot is made."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "widget", "ipympl"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history, path=None, ax=None, title="loss", label=None):
    """Training loss per step (thin) and validation loss (markers) of a :class:`cllm.train.History`.

    With ``path`` the figure is written as PNG (folders created) and closed; returns the axes.
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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ax.figure.tight_layout()
        ax.figure.savefig(path)
        if own:
            plt.close(ax.figure)
    return ax


FIGURES_ENV = "CLLM_WRITE_FIGURES"  # set to 1 when re-rendering the notebooks for a commit


def save_figure(fig, path, dpi=100) -> "Path | None":
    """Write ``fig`` as a PNG at ``path``, but only when the environment variable
    ``CLLM_WRITE_FIGURES`` is ``1``; returns the path written, or None.

    The notebooks call this for every figure that the README and ``figures/`` show. Running them as
    tests (``python -m pytest``) therefore leaves the tracked figures as they are, while the
    re-render (``CLLM_WRITE_FIGURES=1 jupyter nbconvert --execute ...``) refreshes them. The file is
    written to a temporary name and renamed, so an interrupted run never leaves half a PNG.
    """
    import os

    if os.environ.get(FIGURES_ENV) != "1":
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
