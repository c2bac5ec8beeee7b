"""The notebooks in a real JupyterLab, driven by a real browser.

Starts ``jupyter lab`` on the repository (127.0.0.1, a free port, a random token, throwaway
config/runtime/settings/workspaces/checkpoint directories, autosave off), drives Debian's Chromium
with Playwright for Python, and checks that

* the hyperparameter explorer (notebook 14) trains when its controls are changed (learning rate,
  steps, and the embedding set to "lattice") and Train is clicked: the live loss curve changes and the
  final validation loss it shows is the one ``cllm.course.explorer.run_training`` gives for the same
  settings;
* the step-through (notebook 15) walks the forward pass in the activation store's order and then the
  backward pass from the logits, with the label, phase, statistics and heat map following;
* every other notebook renders with its stored outputs (figures included) and without errors;
* no notebook is changed on disk and no checkpoint is left in the repository.

Skipped when Chromium (``apt-get install chromium``) or Playwright (``pip install -r
requirements-dev.txt``) is missing. Playwright's own browser download is never used.

Screenshots of the two widgets are written to the test's temporary directory; with
``CLLM_UPDATE_SCREENSHOTS=1`` they are written to ``figures/screenshot_explorer.png`` and
``figures/screenshot_step_through.png`` (so that a test run does not rewrite tracked files).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
FIGURES = REPO / "figures"
CHROMIUM = "/usr/bin/chromium"
ENABLE = ("to run them: `apt-get install chromium` (Debian's /usr/bin/chromium) and "
          "`pip install -r requirements-dev.txt` (Playwright for Python; no `playwright install` needed)")

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"browser tests need Chromium at {CHROMIUM}; {ENABLE}", allow_module_level=True)
try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip(f"browser tests need Playwright for Python; {ENABLE}", allow_module_level=True)
try:
    import jupyterlab  # noqa: F401
except ImportError:
    pytest.skip("browser tests need JupyterLab: `pip install -r requirements.txt`", allow_module_level=True)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1000}

EXPLORER_NB = "notebooks/14_hyperparameter_explorer.ipynb"
STEP_NB = "notebooks/15_step_through.ipynb"
OTHER_NBS = sorted(f"notebooks/{p.name}" for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")
                   if f"notebooks/{p.name}" not in (EXPLORER_NB, STEP_NB))

# bounded waits, in seconds (generous: the machine may be busy)
SERVER_START_S = 120     # until /api/status answers
APP_START_S = 120        # until JupyterLab's front end is up
OPEN_S = 120             # a notebook opened, its kernel (if any) idle
RUN_ALL_S = 300          # every cell of notebook 14 or 15 executed
TRAIN_S = 180            # one explorer run of a few dozen steps
UI_S = 30                # one widget update (a click, a typed value)

# The explorer run the test starts from the browser: learning rate and steps typed into the controls,
# the embedding chosen in its dropdown.
EXPLORER_LR_TEXT, EXPLORER_LR = "1.0e-2", 1e-2
EXPLORER_STEPS = 30
EXPLORER_EMBEDDING = "lattice"


# ------------------------------------------------------------------------------------------ helpers
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digests() -> dict:
    """sha256 of every notebook (what the test must not change), by path relative to the repository."""
    return {f"notebooks/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(NOTEBOOKS.glob("*.ipynb"))}


def _checkpoint_dirs() -> set:
    return {str(p.relative_to(REPO)) for p in REPO.rglob(".ipynb_checkpoints")}


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


_NUMBER = r"[-+]?\d+\.\d+"


def _norm(text: str) -> str:
    return " ".join(text.split())


class Lab:
    """A running JupyterLab server and one Chromium page with the JupyterLab front end loaded."""

    def __init__(self, base_url: str, token: str, page, log: Path, shots: Path):
        self.base_url, self.token, self.page, self.log, self.shots = base_url, token, page, log, shots
        self.console_errors: list = []
        self.opened: set = set()  # notebooks opened (relative paths), checked for changes at the end

    def diagnostics(self) -> str:
        errs = "\n  ".join(self.console_errors[-8:]) or "(none)"
        return f"\nbrowser console errors (last 8):\n  {errs}\njupyter lab log (tail):\n{_tail(self.log, 15)}"

    def fail(self, notebook: str, message: str) -> None:
        """Fail with the notebook's name, a page screenshot for the post-mortem and the logs."""
        shot = self.shots / f"failure-{Path(notebook).stem}.png"
        try:
            self.page.screenshot(path=str(shot))
            where = f"\n(page screenshot: {shot})"
        except PlaywrightError:
            where = ""
        pytest.fail(f"{notebook}: {message}{where}{self.diagnostics()}", pytrace=False)

    # ---------------------------------------------------------------- notebooks
    def open(self, notebook: str) -> "Notebook":
        """Open ``notebook`` (a path relative to the repository) in the main area."""
        self.opened.add(notebook)
        try:
            self.page.evaluate(_OPEN_JS, notebook)
            self.page.wait_for_function(_READY_JS, arg=notebook, timeout=OPEN_S * 1000, polling=250)
        except PlaywrightError as exc:
            self.fail(notebook, f"did not open with an idle kernel within {OPEN_S} s: {exc}")
        return Notebook(self, notebook)


class Notebook:
    def __init__(self, lab: Lab, path: str):
        self.lab, self.path, self.page = lab, path, lab.page
        self.root = self.page.locator(f'[data-cllm-path="{path}"]')

    def fail(self, message: str) -> None:
        self.lab.fail(self.path, message)

    def run_all(self) -> None:
        """Run > Run All Cells (the command behind the menu entry); wait until every cell ran and the
        kernel is idle; fail on any cell that raised."""
        t0 = time.perf_counter()
        try:
            self.page.evaluate(_RUN_ALL_JS, self.path)
            self.page.wait_for_function("() => window.cllmRun !== undefined", timeout=RUN_ALL_S * 1000,
                                        polling=250)
            self.page.wait_for_function(_IDLE_JS, arg=self.path, timeout=OPEN_S * 1000, polling=250)
        except PlaywrightError as exc:
            self.fail(f"Run All Cells did not finish within {RUN_ALL_S} s: {exc}")
        outcome = self.page.evaluate("() => window.cllmRun")
        cells = self.cells()
        errors = [f"cell {c['index']}: {c['errors'][0][:300]}" for c in cells if c["errors"]]
        if errors or outcome.get("ok") is not True:
            self.fail(f"Run All Cells reported {outcome}; cells with errors:\n  " + "\n  ".join(errors or ["(none)"]))
        not_run = [c["index"] for c in cells if c["type"] == "code" and c["executionCount"] is None]
        if not_run:
            self.fail(f"after Run All Cells, code cells {not_run} have no execution count")
        self.run_seconds = time.perf_counter() - t0

    def cells(self) -> list:
        """Per cell: index, type, executionCount, outputs (model), domOutputs, images (loaded ones),
        brokenImages, errors (error outputs and tracebacks on stderr, from the model and from the page),
        and for markdown cells rendered (non-empty rendered markdown)."""
        return self.page.evaluate(_CELLS_JS, self.path)

    def close(self) -> None:
        """Close without saving (the notebook is marked clean first, so nothing asks to save) and shut
        its kernel down."""
        try:
            self.page.evaluate(_CLOSE_JS, self.path)
        except PlaywrightError:
            pass

    # ---------------------------------------------------------------- widgets
    def widget(self, css_class: str, what: str, visible: bool = True):
        """The one rendered element with ``css_class`` in this notebook (``visible=False``: present in the
        page, possibly empty, like an HTML widget with no text yet)."""
        loc = self.root.locator(f".{css_class}")
        try:
            loc.first.wait_for(state="visible" if visible else "attached", timeout=UI_S * 1000)
        except PlaywrightError:
            self.fail(f"the {what} (CSS class {css_class!r}) is not rendered after running the notebook")
        n = loc.count()
        if n != 1:
            self.fail(f"expected exactly one {what} (CSS class {css_class!r}), found {n}")
        return loc

    def text(self, loc) -> str:
        return _norm(loc.inner_text())

    def wait_text(self, loc, what: str, expected=None, pattern=None, timeout=UI_S) -> str:
        """Wait until ``loc`` shows ``expected`` (whitespace-normalised) or matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.text(loc)
            if (expected is not None and got == _norm(expected)) or (pattern is not None and re.search(pattern, got)):
                return got
            if time.monotonic() > deadline:
                want = repr(expected) if expected is not None else f"text matching {pattern!r}"
                self.fail(f"the {what} shows {got!r}, expected {want} (waited {timeout} s)")
            self.page.wait_for_timeout(100)

    def wait_number(self, loc, what: str, expected: float, timeout=UI_S) -> float:
        """Wait until ``loc`` shows a number equal to ``expected`` (to 1e-9 relative): a slider readout,
        whose format (d3's, e.g. ".1e" -> "3.0e-3") is the browser's business."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.text(loc)
            try:
                if math.isclose(float(got), expected, rel_tol=1e-9):
                    return float(got)
            except ValueError:
                pass
            if time.monotonic() > deadline:
                self.fail(f"the {what} shows {got!r}, expected {expected:g} (waited {timeout} s)")
            self.page.wait_for_timeout(100)

    def image_digest(self, loc) -> str:
        """sha256 of the bytes behind an <img> (ipywidgets' Image widgets use blob: URLs)."""
        for _ in range(50):
            digest = loc.evaluate(_IMG_DIGEST_JS)
            if digest:
                return digest
            self.page.wait_for_timeout(100)  # the blob was replaced while we read it: try again
        self.fail("could not read an image's bytes")

    def wait_stats(self, loc, what: str, expected: str, timeout=UI_S) -> str:
        """Wait until the statistics line ("mean +0.1234   std ...") shows the numbers of ``expected``
        to within 2e-4 (they are printed to 4 decimals; two processes may round a last digit apart)."""
        def split(text):
            text = _norm(text)
            return re.sub(_NUMBER, "#", text), [float(x) for x in re.findall(_NUMBER, text)]

        words, want = split(expected)
        deadline = time.monotonic() + timeout
        while True:
            got = self.text(loc)
            got_words, nums = split(got)
            if got_words == words and all(abs(a - b) <= 2e-4 for a, b in zip(nums, want)):
                return got
            if time.monotonic() > deadline:
                self.fail(f"the {what} shows {got!r}, expected {_norm(expected)!r} (to 2e-4; waited {timeout} s)")
            self.page.wait_for_timeout(100)

    def wait_image_change(self, loc, previous: str, what: str, timeout=UI_S) -> str:
        """Wait until the image's bytes differ from ``previous``; returns the new digest."""
        deadline = time.monotonic() + timeout
        while True:
            digest = self.image_digest(loc)
            if digest != previous:
                return digest
            if time.monotonic() > deadline:
                self.fail(f"the {what} did not change (waited {timeout} s)")
            self.page.wait_for_timeout(100)

    def set_readout(self, slider, value_text: str, what: str) -> None:
        """Type a value into a slider's editable readout and press Enter."""
        readout = slider.locator(".widget-readout")
        try:
            readout.click()
            readout.fill(value_text)
            readout.press("Enter")
        except PlaywrightError as exc:
            self.fail(f"could not type {value_text!r} into the {what}'s readout: {exc}")

    def screenshot(self, loc, name: str) -> Path:
        path = self.lab.shots / name
        loc.scroll_into_view_if_needed()
        loc.screenshot(path=str(path), animations="disabled")
        if os.environ.get("CLLM_UPDATE_SCREENSHOTS") == "1":
            shutil.copyfile(path, FIGURES / name)
        return path


# ------------------------------------------------------------------------------- JavaScript
# JupyterLab exposes its application object as window.jupyterapp when the server runs with
# --LabApp.expose_app_in_browser=True (the switch JupyterLab's own UI tests, Galata, use).
_OPEN_JS = """async (path) => {
  const app = window.jupyterapp;
  window.cllmPanels = window.cllmPanels || {};
  const panel = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  panel.node.setAttribute('data-cllm-path', path);
  window.cllmPanels[path] = panel;
  app.shell.activateById(panel.id);
}"""  # readiness is polled (with a timeout) by _READY_JS

_READY_JS = """(path) => {
  const p = window.cllmPanels && window.cllmPanels[path];
  if (!p || !p.context.isReady || !p.isVisible) return false;
  const k = p.sessionContext.session && p.sessionContext.session.kernel;
  return !!k && k.status === 'idle';
}"""

_IDLE_JS = """(path) => {
  const k = window.cllmPanels[path].sessionContext.session.kernel;
  return k.status === 'idle';
}"""

_RUN_ALL_JS = """async (path) => {
  const app = window.jupyterapp, panel = window.cllmPanels[path];
  app.shell.activateById(panel.id);
  for (let i = 0; i < 100 && app.shell.currentWidget !== panel; i++) await new Promise(r => setTimeout(r, 50));
  if (app.shell.currentWidget !== panel) throw new Error('the notebook did not become the current widget');
  window.cllmRun = undefined;
  app.commands.execute('notebook:run-all-cells').then(ok => { window.cllmRun = {ok}; },
                                                      err => { window.cllmRun = {error: String(err)}; });
}"""

_CELLS_JS = """(path) => {
  const panel = window.cllmPanels[path];
  return panel.content.widgets.map((cell, index) => {
    const m = cell.model, out = {index, type: m.type, executionCount: null, outputs: 0, domOutputs: 0,
                                 images: 0, brokenImages: 0, errors: []};
    if (m.type === 'markdown') {
      const md = cell.node.querySelector('.jp-RenderedMarkdown');
      out.rendered = !!md && md.textContent.trim().length > 0;
    }
    if (m.type !== 'code') return out;
    out.executionCount = m.executionCount;
    out.outputs = m.outputs.length;
    for (let i = 0; i < m.outputs.length; i++) {
      const o = m.outputs.get(i).toJSON();
      if (o.output_type === 'error') out.errors.push(`${o.ename}: ${o.evalue}`);
      if (o.output_type === 'stream' && o.name === 'stderr') {
        const t = Array.isArray(o.text) ? o.text.join('') : String(o.text);
        if (t.includes('Traceback')) out.errors.push(t);
      }
    }
    const area = cell.node.querySelector('.jp-Cell-outputArea');
    if (area) {
      out.domOutputs = area.querySelectorAll('.jp-OutputArea-output').length;
      const imgs = area.querySelectorAll('.jp-RenderedImage img, .jp-RenderedSVG img, .jp-RenderedSVG svg');
      imgs.forEach(img => { if (img.tagName !== 'IMG' || (img.complete && img.naturalWidth > 0)) out.images++;
                            else out.brokenImages++; });
      area.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"], .jp-OutputArea-output.jp-mod-error')
        .forEach(el => { if (el.textContent.includes('Traceback')) out.errors.push(el.textContent.slice(0, 300)); });
    }
    return out;
  });
}"""

_CLOSE_JS = """async (path) => {
  const panel = window.cllmPanels && window.cllmPanels[path];
  if (!panel) return;
  delete window.cllmPanels[path];
  panel.context.model.dirty = false;
  const tenSeconds = new Promise(resolve => setTimeout(resolve, 10000));
  try { await Promise.race([panel.sessionContext.shutdown(), tenSeconds]); } catch (e) {}
  panel.dispose();
}"""

_IMG_DIGEST_JS = """async (img) => {
  try {
    const buf = await (await fetch(img.src)).arrayBuffer();
    const d = new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
    return Array.from(d, b => b.toString(16).padStart(2, '0')).join('');
  } catch (e) { return null; }
}"""


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on the repository and a Chromium page with it loaded; always torn down."""
    tmp = tmp_path_factory.mktemp("jupyterlab")
    shots = tmp / "screenshots"
    shots.mkdir()
    settings = tmp / "settings"
    overrides = {
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        # every cell in the DOM, so stored outputs can be counted without scrolling
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for plugin, values in overrides.items():
        f = settings / f"{plugin}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    dirs = {name: tmp / name for name in ("config", "runtime", "workspaces", "checkpoints")}
    for d in dirs.values():
        d.mkdir()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
               OPENBLAS_NUM_THREADS="1")  # what the notebooks ask for themselves (setdefault)
    env.pop("JUPYTER_TOKEN", None)
    token = secrets.token_hex(24)
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.token={token}",
           f"--ServerApp.root_dir={REPO}", "--LabApp.expose_app_in_browser=True",
           # checkpoints (JupyterLab makes one when it opens a notebook) go to the temporary directory
           f"--FileCheckpoints.checkpoint_dir={dirs['checkpoints']}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    before, checkpoints_before = _digests(), _checkpoint_dirs()
    log = tmp / "jupyterlab.log"
    lab = None
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with status {proc.returncode} before answering:\n{_tail(log)}",
                            pytrace=False)
            try:
                with urllib.request.urlopen(f"{base_url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer {base_url}/api/status within {SERVER_START_S} s:\n"
                            f"{_tail(log)}", pytrace=False)
            time.sleep(0.25)

        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                user_data_dir=str(tmp / "chromium-profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_ARGS, viewport=VIEWPORT)
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.set_default_timeout(UI_S * 1000)
                lab = Lab(base_url, token, page, log, shots)
                page.on("console", lambda m: lab.console_errors.append(m.text[:300]) if m.type == "error" else None)
                page.on("pageerror", lambda e: lab.console_errors.append(f"page error: {e}"[:300]))
                # ?reset: start from an empty workspace (nothing restored from an earlier run)
                page.goto(f"{base_url}/lab?reset&token={token}", timeout=APP_START_S * 1000)
                try:
                    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.commands"
                                           " && window.jupyterapp.commands.hasCommand('notebook:run-all-cells')",
                                           timeout=APP_START_S * 1000, polling=250)
                    page.evaluate("() => Promise.race([window.jupyterapp.restored,"
                                  " new Promise(resolve => setTimeout(resolve, 60000))])")
                except PlaywrightError as exc:
                    pytest.fail(f"the JupyterLab front end did not start within {APP_START_S} s "
                                f"(is --LabApp.expose_app_in_browser supported?): {exc}\n{_tail(log)}",
                                pytrace=False)
                # more room for the notebooks: collapse the file browser
                page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
                yield lab
            finally:
                context.close()
    finally:
        proc.terminate()  # the server shuts its kernels down
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the server and its kernels (its own process group)
            proc.wait(timeout=30)
    # only the notebooks this module opened: another process may be editing the others
    opened = lab.opened if lab is not None else set()
    changed = sorted(name for name, digest in _digests().items() if name in opened and before.get(name) != digest)
    assert not changed, f"the browser tests changed notebooks on disk: {changed}"
    new_checkpoints = sorted(_checkpoint_dirs() - checkpoints_before)
    assert not new_checkpoints, f"the browser tests left checkpoint directories: {new_checkpoints}"


# --------------------------------------------------------------------------------------- tests
def test_explorer_trains_from_the_browser(lab):
    from cllm.course.explorer import (EXPLORER_EMBEDDINGS, EXPLORER_INITS, ExplorerSettings, prepare_data,
                                      run_training)

    nb = lab.open(EXPLORER_NB)
    try:
        nb.run_all()
        lr = nb.widget("cllm-explorer-lr", "learning-rate slider")
        steps = nb.widget("cllm-explorer-steps", "steps field")
        train = nb.widget("cllm-explorer-train", "Train button")
        stop = nb.widget("cllm-explorer-stop", "Stop button")
        status = nb.widget("cllm-explorer-status", "status line")
        plot = nb.widget("cllm-explorer-plot", "live loss-curve image")
        final = nb.widget("cllm-explorer-final-loss", "final-loss line")
        results = nb.widget("cllm-explorer-results", "results table", visible=False)
        nb.widget("cllm-explorer-optimizer", "optimizer dropdown")
        nb.widget("cllm-explorer-d-model", "d_model dropdown")
        init = nb.widget("cllm-explorer-init", "init dropdown").locator("select")
        embedding = nb.widget("cllm-explorer-embedding", "embedding dropdown").locator("select")
        for select, what, want in ((init, "init", EXPLORER_INITS), (embedding, "embedding", EXPLORER_EMBEDDINGS)):
            got = [t.strip() for t in select.locator("option").all_inner_texts()]
            if got != list(want):
                nb.fail(f"the {what} dropdown offers {got}, expected {list(want)}")

        defaults = ExplorerSettings()
        nb.wait_number(lr.locator(".widget-readout"), "learning-rate readout", defaults.lr)
        nb.wait_text(final, "final-loss line", "final validation loss: (no run yet)")
        nb.wait_text(status, "status line", pattern=r"^ready: ")
        if not train.is_enabled() or stop.is_enabled():
            nb.fail("before a run, Train should be enabled and Stop disabled")

        # change the learning rate (the slider's readout is editable) and the number of steps
        nb.set_readout(lr, EXPLORER_LR_TEXT, "learning-rate slider")
        nb.wait_number(lr.locator(".widget-readout"), f"learning-rate readout after typing {EXPLORER_LR_TEXT!r} "
                       "+ Enter", EXPLORER_LR)
        handle = lr.locator(".noUi-handle")
        want = f"{math.log10(EXPLORER_LR):.1f}"
        got = handle.get_attribute("aria-valuenow")
        if got is None or abs(float(got) - float(want)) > 1e-9:
            nb.fail(f"the learning-rate slider's handle is at exponent {got}, expected {want} after typing "
                    f"{EXPLORER_LR_TEXT}")
        field = steps.locator("input")
        field.fill(str(EXPLORER_STEPS))
        field.press("Enter")
        field.blur()
        if field.input_value() != str(EXPLORER_STEPS):
            nb.fail(f"the steps field shows {field.input_value()!r}, expected {EXPLORER_STEPS}")
        embedding.select_option(label=EXPLORER_EMBEDDING)
        if embedding.locator("option:checked").inner_text().strip() != EXPLORER_EMBEDDING:
            nb.fail(f"the embedding dropdown did not take {EXPLORER_EMBEDDING!r}")

        blank = nb.image_digest(plot)
        train.click()
        # during the run: the status counts steps, the curve is redrawn; at the end the final loss shows
        seen = {blank}
        deadline = time.monotonic() + TRAIN_S
        pattern = re.compile(r"final validation loss: (\d+\.\d{4})$")
        while True:
            seen.add(nb.image_digest(plot))
            m = pattern.search(nb.text(final))
            if m:
                break
            if "failed" in nb.text(final) or time.monotonic() > deadline:
                nb.fail(f"after clicking Train the final-loss line shows {nb.text(final)!r} and the status "
                        f"{nb.text(status)!r}; expected 'final validation loss: X.XXXX' within {TRAIN_S} s")
            lab.page.wait_for_timeout(100)
        shown = float(m.group(1))
        after = nb.image_digest(plot)
        seen.add(after)
        if after == blank:
            nb.fail("the live loss-curve image (cllm-explorer-plot) did not change after the run")
        nb.wait_text(status, "status line", pattern=rf"^run 1: finished {EXPLORER_STEPS} steps in ")
        # the kernel received the typed values and the chosen embedding: the results table names them
        table = nb.text(results)
        if (f"lr {EXPLORER_LR:.1e}" not in table or not re.search(rf"\b{EXPLORER_STEPS}\b", table)
                or f"{EXPLORER_EMBEDDING}-emb" not in table):
            nb.fail(f"the results table should list a run with lr {EXPLORER_LR:.1e}, {EXPLORER_STEPS} steps and the "
                    f"{EXPLORER_EMBEDDING} embedding; it reads {table!r}")
        if not train.is_enabled() or stop.is_enabled():
            nb.fail("after the run, Train should be enabled again and Stop disabled")

        # the same settings, trained directly in this process, give the loss the browser showed
        direct = run_training(defaults.replace(lr=EXPLORER_LR, steps=EXPLORER_STEPS, embedding=EXPLORER_EMBEDDING),
                              prepare_data())
        if abs(direct.final_val_loss - shown) > 1e-4:
            nb.fail(f"the explorer shows final validation loss {shown:.4f}, but run_training with lr "
                    f"{EXPLORER_LR:g}, {EXPLORER_STEPS} steps and the {EXPLORER_EMBEDDING} embedding gives "
                    f"{direct.final_val_loss:.4f}")

        assert len(seen) >= 2 and abs(direct.final_val_loss - shown) <= 1e-4  # (each already checked above)
        nb.screenshot(nb.widget("cllm-explorer", "explorer"), "screenshot_explorer.png")
        print(f"explorer: run all {nb.run_seconds:.1f} s; loss shown {shown:.4f}, direct "
              f"{direct.final_val_loss:.4f}; {len(seen) - 1} distinct curve image(s) after the blank one")
    finally:
        nb.close()


def test_step_through_walks_forward_then_backward(lab):
    from cllm.course.stepthrough import tiny_demo

    st = tiny_demo(train_steps=200, seed=0)[0]  # what the notebook builds (FULL = False)
    n_fwd = len(st.names("forward"))
    nb = lab.open(STEP_NB)
    try:
        nb.run_all()
        nxt = nb.widget("cllm-step-next", "Next button")
        prev = nb.widget("cllm-step-prev", "Prev button")
        slider = nb.widget("cllm-step-slider", "step slider")
        label = nb.widget("cllm-step-label", "step label")
        phase = nb.widget("cllm-step-phase", "phase")
        stats = nb.widget("cllm-step-stats", "statistics line")
        heat = nb.widget("cllm-step-heatmap", "heat-map image")

        shown = {"digest": nb.image_digest(heat), "position": None}

        def expect(i, how):
            """After ``how``, the view shows step ``i``: its label, phase, statistics and a new heat map
            (each step's heat map differs from the one shown before it)."""
            ph, name, _ = st.steps[i]
            nb.wait_text(label, f"step label after {how}", st.describe(i)["in_phase"])  # the phase is beside it
            nb.wait_text(phase, f"phase after {how} (step {i}: {name})", ph)
            nb.wait_stats(stats, f"statistics line after {how} (step {i}: {name})", st.stats_text(i))
            if shown["position"] is not None and shown["position"] != i:
                old = shown["digest"]
                shown["digest"] = nb.wait_image_change(heat, old, f"heat map after {how} (step {i}: {name}, "
                                                                  f"previously step {shown['position']})")
            shown["position"] = i

        # after Run All the view shows whichever step the notebook's last cells left it on
        start = f"{nb.text(phase)} {nb.text(label)}"
        if start not in st.labels():
            nb.fail(f"after running the notebook the phase and step label read {start!r}, which is none of "
                    f"the {len(st)} steps of the tiny model's step-through")
        expect(st.labels().index(start), "running the notebook")
        nb.set_readout(slider, "0", "step slider")
        expect(0, "typing 0 into the slider's readout")
        if prev.is_enabled():
            nb.fail("at step 0 the Prev button should be disabled")
        for i in range(1, 6):  # the first forward steps, in the store's order, one Next at a time
            nxt.click()
            expect(i, f"{i} click(s) on Next")

        nb.set_readout(slider, str(n_fwd - 1), "step slider")
        expect(n_fwd - 1, f"typing {n_fwd - 1} into the slider's readout")
        if st.steps[n_fwd][:2] != ("backward", "logits"):
            nb.fail(f"the backward pass should start at the logits, the step-through says {st.label(n_fwd)}")
        nxt.click()
        expect(n_fwd, "Next from the last forward step")
        nxt.click()
        expect(n_fwd + 1, "a second Next into the backward pass")
        prev.click()
        expect(n_fwd, "Prev from the second backward step")

        nb.screenshot(nb.widget("cllm-step", "step-through"), "screenshot_step_through.png")

        nb.set_readout(slider, str(len(st) - 1), "step slider")
        expect(len(st) - 1, f"typing {len(st) - 1} into the slider's readout")
        if nxt.is_enabled():
            nb.fail("at the last step the Next button should be disabled")
        assert shown["position"] == len(st) - 1
        print(f"step-through: run all {nb.run_seconds:.1f} s; walked {len(st)} steps' labels in order")
    finally:
        nb.close()


@pytest.mark.parametrize("notebook", OTHER_NBS, ids=[Path(p).stem for p in OTHER_NBS])
def test_notebook_renders_with_its_stored_outputs(lab, notebook):
    stored = json.loads((REPO / notebook).read_text())
    want = []  # per cell: (type, number of stored outputs, number of stored images)
    for cell in stored["cells"]:
        outs = cell.get("outputs", []) if cell["cell_type"] == "code" else []
        images = sum(1 for o in outs for mime in o.get("data", {}) if mime.startswith("image/"))
        want.append((cell["cell_type"], len(outs), images))
    nb = lab.open(notebook)
    try:
        deadline = time.monotonic() + OPEN_S
        while True:  # outputs and images render asynchronously after the notebook opens
            got = nb.cells()
            problems = []
            if len(got) != len(want):
                problems.append(f"{len(got)} cells on the page, {len(want)} in the file")
            for (ctype, n_out, n_img), c in zip(want, got):
                if c["type"] != ctype:
                    problems.append(f"cell {c['index']} is a {c['type']} cell, the file says {ctype}")
                elif ctype == "markdown" and not c.get("rendered"):
                    problems.append(f"cell {c['index']}: markdown not rendered")
                elif n_out and not c["domOutputs"]:
                    problems.append(f"cell {c['index']}: {n_out} stored output(s), none rendered")
                elif c["images"] < n_img:
                    problems.append(f"cell {c['index']}: {n_img} stored figure(s), {c['images']} rendered "
                                    f"({c['brokenImages']} not loaded)")
            errors = [f"cell {c['index']}: {e[:300]}" for c in got for e in c["errors"]]
            if errors:
                nb.fail("error output in the stored notebook:\n  " + "\n  ".join(errors))
            if not problems:
                break
            if time.monotonic() > deadline:
                nb.fail("does not render its stored outputs:\n  " + "\n  ".join(problems))
            lab.page.wait_for_timeout(250)
        n_outputs = sum(c["domOutputs"] for c in got)
        assert n_outputs >= 1, f"{notebook}: no rendered output at all"
    finally:
        nb.close()
