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

    With ``path`` the figure is written as PNG (folders created; atomically: a temp file, then
    os.replace, so a failed write leaves no half-written file) and closed; returns the axes.
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
        import os
        import tempfile

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ax.figure.tight_layout()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                ax.figure.savefig(f, format=path.suffix[1:] or "png")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        finally:
            if own:
                plt.close(ax.figure)
    return ax
