"""ipywidgets interfaces: the hyperparameter explorer and the forward/backward step-through.

    from cllm.course.widgets import Explorer, StepThroughWidget
    explorer = Explorer();  display(explorer.widget)
    view = StepThroughWidget.demo();  display(view.widget)

Both are thin: what they compute lives in :mod:`cllm.course.explorer` and :mod:`cllm.course.stepthrough`, which
tests call directly. Every method a button calls is a plain method too (``explorer.start()``,
``explorer.stop()``, ``view.next()``), so they run without a browser.

This module imports ipywidgets at import time; ``import cllm`` never imports it.

Training runs in a daemon thread, so the notebook stays usable while it trains. The thread updates
the widgets itself (ipykernel sends widget messages from any thread): the live loss curve is an
``ipywidgets.Image`` holding PNG bytes drawn by matplotlib's Agg canvas without pyplot, redrawn every
few steps (at most a few times a second).
"""
from __future__ import annotations

import html
import threading
import time
from functools import lru_cache
from typing import Optional

import ipywidgets as W

from .explorer import (EXPLORER_EMBEDDINGS, EXPLORER_INITS, EXPLORER_OPTIMIZERS, ExplorerData, ExplorerSettings,
                       RunResult, figure_png, plot_live, plot_runs, prepare_data, results_table, settings_to_configs)
from .stepthrough import StepThrough

__all__ = ["Explorer", "StepThroughWidget", "EXPLORER_CSS_CLASSES", "STEP_CSS_CLASSES"]

#: attribute of :class:`Explorer` -> CSS class of its DOM element (for browser tests and styling)
EXPLORER_CSS_CLASSES = {
    "widget": "cllm-explorer",
    "lr": "cllm-explorer-lr",
    "n_layers": "cllm-explorer-layers",
    "n_heads": "cllm-explorer-heads",
    "d_model": "cllm-explorer-d-model",
    "seq_len": "cllm-explorer-seq-len",
    "batch_size": "cllm-explorer-batch-size",
    "steps": "cllm-explorer-steps",
    "optimizer": "cllm-explorer-optimizer",
    "init": "cllm-explorer-init",
    "embedding": "cllm-explorer-embedding",
    "grad_clip": "cllm-explorer-clip",
    "seed": "cllm-explorer-seed",
    "train_button": "cllm-explorer-train",
    "stop_button": "cllm-explorer-stop",
    "clear_button": "cllm-explorer-clear",
    "status": "cllm-explorer-status",
    "plot": "cllm-explorer-plot",
    "compare_plot": "cllm-explorer-compare",
    "final_loss": "cllm-explorer-final-loss",
    "sample": "cllm-explorer-sample",
    "results": "cllm-explorer-results",
}

#: attribute of :class:`StepThroughWidget` -> CSS class
STEP_CSS_CLASSES = {
    "widget": "cllm-step",
    "next_button": "cllm-step-next",
    "prev_button": "cllm-step-prev",
    "slider": "cllm-step-slider",
    "phase": "cllm-step-phase",
    "label": "cllm-step-label",
    "stats": "cllm-step-stats",
    "note": "cllm-step-note",
    "heatmap": "cllm-step-heatmap",
}

_STATUS_COLOURS = {"info": "#333", "running": "#1f5fa8", "done": "#1a7f37", "warning": "#9a6700",
                   "error": "#c0392b"}
_D_MODELS = (8, 16, 24, 32, 48, 64, 96, 128)
_WIDE = {"description_width": "120px"}


@lru_cache(maxsize=None)
def _blank_png(which: str) -> bytes:
    """The empty live plot ("live") or comparison plot ("compare"), drawn once per process."""
    if which == "compare":
        return figure_png(lambda ax: plot_runs(ax, []))
    return figure_png(lambda ax: plot_live(ax, None, title="this run"))


def _close_tree(widget) -> None:
    """Close ``widget`` and, first, every widget below it."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


class Explorer:
    """The hyperparameter explorer: controls, Train / Stop, a live loss curve, a sample, and every
    finished run compared (curves overlaid, a table of final losses).

    Controls (attributes): ``lr`` (FloatLogSlider), ``n_layers``, ``n_heads``, ``d_model``, ``seq_len``,
    ``batch_size``, ``steps``, ``optimizer``, ``init`` (how the weights start), ``embedding`` (learned
    table or prime lattice embedding), ``grad_clip``, ``seed``. Buttons:
    ``train_button`` (calls :meth:`start`), ``stop_button`` (:meth:`stop`), ``clear_button``
    (:meth:`clear`). Outputs: ``status`` (one line; invalid settings are reported here),
    ``plot`` (live curve, PNG), ``compare_plot`` (finished runs, PNG), ``final_loss``
    ("final validation loss: X.XXXX"), ``sample`` (generated text), ``results`` (table).
    State: ``runs`` (list of :class:`RunResult`), ``result`` (the latest), ``thread``, ``trainer``,
    ``error`` (the exception of a failed run, else None).
    """

    def __init__(self, data: Optional[ExplorerData] = None, settings: ExplorerSettings = ExplorerSettings(),
                 redraw_every: int = 5, min_redraw_s: float = 0.5):
        self.data = prepare_data() if data is None else data
        self.base_settings = settings
        self.redraw_every = max(1, int(redraw_every))
        self.min_redraw_s = float(min_redraw_s)
        self.runs: list[RunResult] = []
        self.result: Optional[RunResult] = None
        self.error: Optional[BaseException] = None
        self.thread: Optional[threading.Thread] = None
        self.trainer = None
        self._stop_event = threading.Event()
        self._running = False
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._steps_total = settings.steps
        s = settings

        self.lr = W.FloatLogSlider(value=s.lr, base=10, min=-4, max=-0.5, step=0.05, description="learning rate",
                                   readout_format=".1e", style=_WIDE, continuous_update=False)
        self.n_layers = W.IntSlider(value=s.n_layers, min=1, max=6, description="layers", style=_WIDE)
        self.n_heads = W.IntSlider(value=s.n_heads, min=1, max=8, description="heads", style=_WIDE)
        d_models = sorted(set(_D_MODELS) | {s.d_model})
        self.d_model = W.Dropdown(options=d_models, value=s.d_model, description="d_model", style=_WIDE)
        self.seq_len = W.IntSlider(value=s.seq_len, min=8, max=128, step=8, description="sequence length",
                                   style=_WIDE)
        self.batch_size = W.IntSlider(value=s.batch_size, min=1, max=64, description="batch size", style=_WIDE)
        self.steps = W.BoundedIntText(value=s.steps, min=1, max=20000, description="steps", style=_WIDE)
        self.optimizer = W.Dropdown(options=list(EXPLORER_OPTIMIZERS), value=s.optimizer, description="optimizer",
                                    style=_WIDE)
        self.init = W.Dropdown(options=list(EXPLORER_INITS), value=s.init, description="init", style=_WIDE)
        self.embedding = W.Dropdown(options=list(EXPLORER_EMBEDDINGS), value=s.embedding, description="embedding",
                                    style=_WIDE)
        self.grad_clip = W.FloatSlider(value=s.grad_clip, min=0.0, max=5.0, step=0.25, description="clip (0 = off)",
                                       style=_WIDE)
        self.seed = W.BoundedIntText(value=s.seed, min=0, max=2**31 - 1, description="seed", style=_WIDE)

        self.train_button = W.Button(description="Train", button_style="success", icon="play",
                                     tooltip="train a model with these settings (in the background)")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                                    tooltip="end the run after the current step; the model is kept")
        self.clear_button = W.Button(description="Clear runs", icon="trash", tooltip="forget the finished runs")
        self.train_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self.clear())

        self.status = W.HTML()
        self.final_loss = W.HTML(value="final validation loss: (no run yet)")
        self.plot = W.Image(value=_blank_png("live"), format="png")
        self.compare_plot = W.Image(value=_blank_png("compare"), format="png")
        self.sample = W.HTML(value="")
        self.results = W.HTML(value="")

        left = W.VBox([self.lr, self.steps, self.batch_size, self.seq_len, self.grad_clip, self.seed])
        right = W.VBox([self.n_layers, self.n_heads, self.d_model, self.optimizer, self.init, self.embedding])
        buttons = W.HBox([self.train_button, self.stop_button, self.clear_button])
        self.widget = W.VBox([
            W.HBox([left, right]), buttons, self.status,
            W.HBox([self.plot, self.compare_plot]), self.final_loss, self.sample, self.results,
        ])
        for attr, css in EXPLORER_CSS_CLASSES.items():
            getattr(self, attr).add_class(css)
        self._set_status(f"ready: {len(self.data.train):,} training and {len(self.data.val):,} validation "
                         f"characters, vocabulary {self.data.vocab_size}", "info")

    # ------------------------------------------------------------------------------ settings
    def settings(self) -> ExplorerSettings:
        """The control values, as :class:`ExplorerSettings` (fields without a control keep the
        values the explorer was built with)."""
        return self.base_settings.replace(
            lr=float(self.lr.value), n_layers=int(self.n_layers.value), n_heads=int(self.n_heads.value),
            d_model=int(self.d_model.value), seq_len=int(self.seq_len.value),
            batch_size=int(self.batch_size.value), steps=int(self.steps.value), optimizer=self.optimizer.value,
            init=self.init.value, embedding=self.embedding.value, grad_clip=float(self.grad_clip.value),
            seed=int(self.seed.value))

    def set_settings(self, settings: ExplorerSettings = None, **changes) -> None:
        """Set the controls from ``settings`` and/or keyword changes (``set_settings(lr=1e-2)``)."""
        s = (settings or self.settings()).replace(**changes)
        if s.d_model not in self.d_model.options:
            self.d_model.options = sorted(set(self.d_model.options) | {s.d_model})
        self.base_settings = s
        for name in ("lr", "n_layers", "n_heads", "d_model", "seq_len", "batch_size", "steps", "optimizer", "init",
                     "embedding", "grad_clip", "seed"):
            getattr(self, name).value = getattr(s, name)

    # ------------------------------------------------------------------------------ buttons
    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> Optional[threading.Thread]:
        """What the Train button does: validate the settings and train in a daemon thread.

        Returns the thread, or None when nothing was started (invalid settings, shown in ``status``;
        or a run already in progress).
        """
        with self._lock:
            if self._running:
                self._set_status("a run is already in progress: press Stop first", "warning")
                return None
            settings = self.settings()
            try:
                codes = self.data.lattice_codes if settings.embedding == "lattice" else None
                settings_to_configs(settings, self.data.vocab_size, codes)
            except ValueError as exc:
                self._set_status(f"invalid settings: {exc}", "error")
                return None
            self._running = True
        self._stop_event.clear()
        self.trainer = None
        self.error = None
        self._last_draw = 0.0
        self._steps_total = settings.steps
        self.train_button.disabled = True
        self.stop_button.disabled = False
        self.final_loss.value = "final validation loss: (training)"
        self.sample.value = ""
        self.plot.value = _blank_png("live")
        self._set_status(f"run {len(self.runs) + 1}: starting ({settings.label()})", "running")
        self.thread = threading.Thread(target=self._run, args=(settings,), name="cllm-explorer", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        """What the Stop button does: the run ends cleanly after the step in progress."""
        self._stop_event.set()
        if self.trainer is not None:
            self.trainer.stop_requested = True
        if self._running:
            self._set_status("stopping after the current step...", "warning")

    def wait(self, timeout: Optional[float] = None) -> Optional[RunResult]:
        """Block until the current run ends (for tests and scripts); returns the latest result."""
        if self.thread is not None:
            self.thread.join(timeout)
        return self.result

    def clear(self) -> None:
        """Forget the finished runs (not the one in progress)."""
        self.runs.clear()
        self.compare_plot.value = _blank_png("compare")
        self.results.value = ""

    def close(self) -> None:
        """Stop a run in progress and close every widget of the explorer (frees them in the kernel
        and keeps them out of a saved notebook's widget state)."""
        self.stop()
        self.wait()
        _close_tree(self.widget)

    # ------------------------------------------------------------------------------ the run
    def _run(self, settings: ExplorerSettings) -> None:
        from .explorer import run_training

        result = None
        try:
            result = run_training(settings, self.data, callbacks=[self._on_event], stop_event=self._stop_event)
        except Exception as exc:  # a diverged run, say: reported in the status line, not lost in a thread
            self.error = exc
        try:
            if result is not None:
                self.runs.append(result)
                self.result = result
                k = len(self.runs)
                self.plot.value = figure_png(lambda ax: plot_live(ax, result.history, title=f"run {k}"))
                self.compare_plot.value = figure_png(lambda ax: plot_runs(ax, self.runs))
                self.results.value = self._results_html()
                self.sample.value = (f"<b>sample</b> (temperature {settings.temperature:g}):<pre "
                                     f"style='white-space:pre-wrap;margin:2px 0'>{html.escape(result.sample)}</pre>")
        finally:  # whatever happens while drawing, the explorer is ready for the next run
            self._running = False
            self.train_button.disabled = False
            self.stop_button.disabled = True
        if result is None:
            self.final_loss.value = "final validation loss: (run failed)"
            self._set_status(f"run failed: {self.error}", "error")
            return
        how = (f"stopped at step {result.steps_done} of {settings.steps}" if result.stopped
               else f"finished {result.steps_done} steps")
        self._set_status(f"run {len(self.runs)}: {how} in {result.seconds:.1f} s; train loss "
                         f"{result.final_train_loss:.4f}, validation loss {result.final_val_loss:.4f}", "done")
        self.final_loss.value = f"final validation loss: {result.final_val_loss:.4f}"

    def _on_event(self, trainer, event, info) -> None:
        """Trainer callback, in the training thread: keep the status line and the curve current."""
        self.trainer = trainer
        if self._stop_event.is_set():
            trainer.stop_requested = True
        if event == "step":
            step = info["step"] + 1
            if step % self.redraw_every == 0 or step == self._steps_total:
                self._set_status(f"run {len(self.runs) + 1}: step {step}/{self._steps_total}, "
                                 f"loss {info['loss']:.4f}", "running")
                self._redraw(trainer.history)
        elif event == "eval":
            self._redraw(trainer.history)

    def _redraw(self, history) -> None:
        now = time.perf_counter()
        if now - self._last_draw < self.min_redraw_s:
            return
        self._last_draw = now
        k = len(self.runs) + 1
        self.plot.value = figure_png(lambda ax: plot_live(ax, history, title=f"run {k} (training)"))

    # ------------------------------------------------------------------------------ display helpers
    def _set_status(self, text: str, kind: str = "info") -> None:
        self.status_kind = kind
        self.status_text = text
        colour = _STATUS_COLOURS.get(kind, "#333")
        self.status.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    def _results_html(self) -> str:
        rows = "".join(
            f"<tr><td>{k}</td><td style='text-align:left'>{html.escape(label)}</td><td>{steps}{'*' if stopped else ''}"
            f"</td><td>{tr:.4f}</td><td>{va:.4f}</td></tr>"
            for k, label, steps, stopped, tr, va in results_table(self.runs))
        foot = "<br><small>* stopped early</small>" if any(r.stopped for r in self.runs) else ""
        return ("<table style='border-collapse:collapse;text-align:right' cellpadding='3'>"
                "<tr><th>run</th><th style='text-align:left'>settings</th><th>steps</th><th>train loss</th>"
                f"<th>val loss</th></tr>{rows}</table>{foot}")


class StepThroughWidget:
    """Prev / Next buttons and a slider over the steps of a :class:`StepThrough`, with the step's
    phase and, beside it, the rest of its label (``4/32: h.0.ln_1.out (2, 8, 16)``, so together they
    read as the label ``forward 4/32: ...``), a line of statistics, one sentence on what the tensor is,
    and a heat map (PNG) with the tokens' text on its position and vocabulary axes.

    Attributes: ``stepper``, ``prev_button``, ``next_button``, ``slider``, ``phase``, ``label``,
    ``stats``, ``note``, ``heatmap``, ``widget``.
    """

    def __init__(self, stepper: StepThrough):
        self.stepper = stepper
        n = len(stepper)
        self.prev_button = W.Button(description="Prev", icon="arrow-left", tooltip="previous op")
        self.next_button = W.Button(description="Next", icon="arrow-right", tooltip="next op")
        self.slider = W.IntSlider(value=stepper.position, min=0, max=n - 1, description="step",
                                  continuous_update=False, layout=W.Layout(width="420px"))
        self.phase = W.HTML()
        self.label = W.HTML()
        self.stats = W.HTML()
        self.note = W.HTML()
        self.heatmap = W.Image(format="png", layout=W.Layout(width="520px", align_self="flex-start"))  # native size, not stretched
        self.prev_button.on_click(lambda _: self.prev())
        self.next_button.on_click(lambda _: self.next())
        self.slider.observe(self._on_slider, names="value")
        self.widget = W.VBox([
            W.HBox([self.prev_button, self.next_button, self.slider]),
            W.HBox([self.phase, self.label]), self.stats, self.note, self.heatmap,
        ])
        for attr, css in STEP_CSS_CLASSES.items():
            getattr(self, attr).add_class(css)
        self._syncing = False
        self.show(stepper.position)

    @classmethod
    def demo(cls, train_steps: int = 200, seed: int = 0) -> "StepThroughWidget":
        """The tiny model of :func:`cllm.course.stepthrough.tiny_demo`, trained ``train_steps`` steps."""
        from .stepthrough import tiny_demo

        return cls(tiny_demo(train_steps=train_steps, seed=seed)[0])

    def next(self) -> dict:
        return self.show(self.stepper.position + 1)

    def prev(self) -> dict:
        return self.show(self.stepper.position - 1)

    def show(self, position: int) -> dict:
        """Move to ``position`` (clipped) and redraw everything; returns the step's description."""
        info = self.stepper.go(position)
        if self.slider.value != self.stepper.position:
            self._syncing = True
            try:
                self.slider.value = self.stepper.position
            finally:
                self._syncing = False
        colour = "#1f5fa8" if info["phase"] == "forward" else "#c0392b"
        self.phase.value = f"<b style='color:{colour}'>{info['phase']}</b>"
        self.label.value = f"<code>{html.escape(info['in_phase'])}</code>"   # the phase word is beside it
        self.stats.value = f"<code>{self.stepper.stats_text()}</code>"
        self.note.value = f"<i>{html.escape(info['note'])}</i>"
        self.heatmap.value = self.stepper.heatmap_png()
        self.prev_button.disabled = self.stepper.at_start
        self.next_button.disabled = self.stepper.at_end
        self.info = info
        return info

    def close(self) -> None:
        """Close every widget of the view."""
        _close_tree(self.widget)

    def _on_slider(self, change) -> None:
        if not self._syncing and change["new"] != self.stepper.position:
            self.show(change["new"])
