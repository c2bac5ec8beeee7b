"""The interactive parts: the hyperparameter explorer and the forward/backward step-through.

The widgets are driven the way a browser drives them (``button.click()`` calls the same handlers a
click in JupyterLab does; control values are set by assignment), with no frontend and no kernel.
"""
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

import cllm
from cllm.course.explorer import (EXPLORER_EMBEDDINGS, EXPLORER_INITS, ExplorerSettings, prepare_data,
                                  results_text, run_training, settings_to_configs, smooth)
from cllm.course.stepthrough import StepThrough, heatmap_array, plot_heatmap, tiny_demo, token_labels, token_text
from cllm.lattice.model import tokenizer_codes

W = pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from cllm.course.widgets import EXPLORER_CSS_CLASSES, STEP_CSS_CLASSES, Explorer, StepThroughWidget  # noqa: E402

from conftest import tiny_config  # noqa: E402

# small enough that a run takes a fraction of a second
FAST = ExplorerSettings(d_model=16, n_heads=2, n_layers=1, seq_len=16, batch_size=4, steps=12, eval_points=2,
                        eval_max_batches=2, sample_tokens=20)


@pytest.fixture(scope="module")
def data():
    return prepare_data()


@pytest.fixture
def explorer(data):
    return Explorer(data=data, settings=FAST, redraw_every=1000, min_redraw_s=1e9)  # no redraws mid-run


# ------------------------------------------------------------------------------ pure logic
def test_import_cllm_stays_cheap():
    code = ("import sys, cllm, cllm.course.explorer, cllm.course.stepthrough; cllm.Model; "
            "bad = [m for m in ('ipywidgets', 'matplotlib') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_settings_to_configs_maps_every_control():
    s = ExplorerSettings(lr=2e-3, n_layers=3, n_heads=4, d_model=48, seq_len=24, batch_size=5, steps=100,
                         optimizer="momentum", init="xavier", grad_clip=0.5, seed=7)
    m, t = settings_to_configs(s, vocab_size=50)
    assert (m.vocab_size, m.n_layers, m.n_heads, m.d_model, m.d_ff, m.max_seq_len) == (50, 3, 4, 48, 192, 24)
    assert (m.init, m.embedding) == ("xavier", "learned")
    assert (t.lr, t.seq_len, t.batch_size, t.steps, t.optimizer, t.grad_clip, t.seed) == (
        2e-3, 24, 5, 100, "momentum", 0.5, 7)
    assert m.lattice_codes is None
    codes = tuple(range(2, 52))
    m, _ = settings_to_configs(s.replace(embedding="lattice"), vocab_size=50, lattice_codes=codes)
    assert (m.init, m.embedding, m.lattice_codes) == ("xavier", "lattice", codes)  # init and embedding: independent
    m, _ = settings_to_configs(s, vocab_size=50, lattice_codes=codes)
    assert m.lattice_codes is None  # codes are for the lattice embedding only


def test_init_and_embedding_are_separate_choices():
    assert EXPLORER_INITS == cllm.config.INITS and "lattice" not in EXPLORER_INITS
    assert EXPLORER_EMBEDDINGS == ("learned", "lattice")
    with pytest.raises(ValueError, match=r"^init must be one of gpt2, xavier, he, got 'lattice' \(.*embedding='lattice'"):
        settings_to_configs(FAST.replace(init="lattice"), vocab_size=50)


def test_lattice_codes_come_from_tokenizer_codes(data):
    assert data.lattice_codes == tokenizer_codes(data.tokenizer, data.train)
    counts = np.bincount(data.train, minlength=data.vocab_size)
    assert data.lattice_codes[int(np.argmax(counts))] == 2  # the most frequent character gets the first prime
    s = FAST.replace(embedding="lattice", init="he")
    m, _ = settings_to_configs(s, data.vocab_size, data.lattice_codes)
    r = run_training(s, data)
    assert r.model.cfg == m and r.model.cfg.lattice_codes == data.lattice_codes and r.model.cfg.init == "he"
    np.testing.assert_array_equal(r.model.buffers["lattice.codes"], data.lattice_codes)
    assert "lattice.proj" in r.model.params and "lattice-emb" in r.label
    assert np.isfinite(r.final_val_loss) and r.final_val_loss != run_training(FAST, data).final_val_loss
    own = tuple(cllm.lattice.first_primes(data.vocab_size).tolist())  # token i -> (i+1)-th prime
    r_own = run_training(s, data, lattice_codes=own)
    assert r_own.model.cfg.lattice_codes == own and r_own.final_val_loss != r.final_val_loss
    assert run_training(FAST, data, lattice_codes=own).model.cfg.lattice_codes is None  # learned: codes unused


@pytest.mark.parametrize("codes,words", [
    ((2, 3, 5), r"^lattice_codes must hold one code per token \(50\), got shape \(3,\)$"),
    (tuple(range(1, 51)), r"^lattice_codes entries must be >= 2, got 1$"),
    ((2,) * 50, "distinct"),
])
def test_bad_lattice_codes_raise_a_clear_value_error(codes, words):
    with pytest.raises(ValueError, match=words):
        settings_to_configs(FAST.replace(embedding="lattice"), vocab_size=50, lattice_codes=codes)


@pytest.mark.parametrize("change,words", [
    (dict(d_model=32, n_heads=3), "divisible"),
    (dict(lr=0.0), "learning rate"),
    (dict(optimizer="adam"), "optimizer"),
    (dict(init="orthogonal"), "init"),
    (dict(embedding="prime"), r"^embedding must be one of learned, lattice, got 'prime'$"),
    (dict(embedding="lattice"), r"^embedding 'lattice' needs the tokens' lattice codes"),
    (dict(grad_clip=-1.0), "clipping"),
    (dict(steps=0), "steps"),
])
def test_invalid_settings_raise_a_clear_value_error(change, words):
    with pytest.raises(ValueError, match=words):
        settings_to_configs(FAST.replace(**change), vocab_size=50)


def test_run_training_is_deterministic_and_learns(data):
    a = run_training(FAST, data)
    b = run_training(FAST, data)
    assert a.final_val_loss == b.final_val_loss and a.history.train_loss == b.history.train_loss
    assert a.sample == b.sample and a.sample.startswith(FAST.prompt) and len(a.sample) == 4 + 20
    assert a.steps_done == 12 and not a.stopped
    assert a.history.val_step == [6, 12]
    assert a.final_val_loss < np.log(data.vocab_size)  # better than a uniform guess
    c = run_training(FAST.replace(seed=1), data)
    assert c.final_val_loss != a.final_val_loss
    assert "run" in results_text([a, c]) and len(smooth([1.0, 2.0, 3.0], 2)) == 3


def test_run_training_stop_event_ends_early_and_keeps_the_model(data):
    stop = threading.Event()

    def after_three(trainer, event, info):
        if event == "step" and info["step"] == 2:
            stop.set()

    r = run_training(FAST.replace(steps=500), data, callbacks=[after_three], stop_event=stop)
    assert r.stopped and r.steps_done == 3 and len(r.history.train_loss) == 3
    assert r.history.val_step[-1] == 3 and np.isfinite(r.final_val_loss) and r.sample
    assert isinstance(r.model, cllm.Model)


# ------------------------------------------------------------------------------ the explorer
def test_explorer_controls_and_css_classes(explorer):
    assert isinstance(explorer.lr, W.FloatLogSlider)
    for attr, css in EXPLORER_CSS_CLASSES.items():
        assert css in getattr(explorer, attr)._dom_classes, attr
    assert explorer.settings() == FAST
    assert list(explorer.init.options) == list(EXPLORER_INITS)
    assert list(explorer.embedding.options) == ["learned", "lattice"]
    explorer.set_settings(lr=1e-2, optimizer="sgd", init="he", embedding="lattice")
    assert (explorer.lr.value, explorer.optimizer.value, explorer.init.value, explorer.embedding.value) == (
        1e-2, "sgd", "he", "lattice")
    assert explorer.settings() == FAST.replace(lr=1e-2, optimizer="sgd", init="he", embedding="lattice")


def test_train_button_runs_in_a_thread_and_matches_a_direct_call(explorer, data):
    explorer.steps.value = 10
    explorer.seed.value = 3
    explorer.train_button.click()
    assert explorer.thread is not None and explorer.thread.daemon
    result = explorer.wait(timeout=60)
    assert not explorer.thread.is_alive() and not explorer.running
    direct = run_training(FAST.replace(steps=10, seed=3), data)
    assert result.final_val_loss == direct.final_val_loss
    assert result.history.train_loss == direct.history.train_loss and result.sample == direct.sample
    assert explorer.final_loss.value == f"final validation loss: {direct.final_val_loss:.4f}"
    assert re.fullmatch(r"final validation loss: \d+\.\d{4}", explorer.final_loss.value)
    assert explorer.status_kind == "done" and "finished 10 steps" in explorer.status_text
    assert explorer.plot.value[:4] == b"\x89PNG" and explorer.compare_plot.value[:4] == b"\x89PNG"
    assert "<table" in explorer.results.value and explorer.runs == [result]
    assert not explorer.train_button.disabled and explorer.stop_button.disabled

    explorer.lr.value = 1e-2  # a second run is compared with the first
    explorer.start()
    explorer.wait(timeout=60)
    assert len(explorer.runs) == 2 and explorer.results.value.count("<tr>") == 3
    explorer.clear()
    assert explorer.runs == [] and explorer.results.value == ""
    explorer.close()  # closes every widget of the tree
    assert explorer.widget.comm is None and explorer.lr.comm is None and explorer.plot.comm is None


def test_embedding_control_trains_the_lattice_embedding(explorer, data):
    explorer.embedding.value = "lattice"
    explorer.train_button.click()
    result = explorer.wait(timeout=60)
    assert result.model.cfg.embedding == "lattice" and result.model.cfg.lattice_codes == data.lattice_codes
    direct = run_training(FAST.replace(embedding="lattice"), data)
    assert result.final_val_loss == direct.final_val_loss and result.sample == direct.sample
    assert "lattice-emb" in explorer.results.value


def test_stop_button_ends_the_run_cleanly(explorer):
    explorer.steps.value = 5000
    seen = threading.Event()

    thread = explorer.start()
    assert thread is not None and explorer.running
    assert explorer.start() is None and "already" in explorer.status_text  # one run at a time
    for _ in range(600):
        if explorer.trainer is not None and explorer.trainer.step >= 3:
            seen.set()
            break
        thread.join(0.05)
    assert seen.is_set()
    explorer.stop_button.click()
    result = explorer.wait(timeout=60)
    assert result.stopped and 3 <= result.steps_done < 5000
    assert len(result.history.train_loss) == result.steps_done and result.history.val_loss
    assert explorer.trainer.stop_requested
    assert explorer.runs == [result] and result.sample and isinstance(result.model, cllm.Model)
    assert "stopped at step" in explorer.status_text
    assert explorer.final_loss.value == f"final validation loss: {result.final_val_loss:.4f}"


def test_invalid_settings_show_an_error_and_start_nothing(explorer):
    explorer.d_model.value = 16
    explorer.n_heads.value = 3
    explorer.train_button.click()
    assert explorer.thread is None and not explorer.running and explorer.runs == []
    assert explorer.status_kind == "error" and "divisible" in explorer.status_text
    assert "invalid settings" in explorer.status.value and "Traceback" not in explorer.status.value
    assert not explorer.train_button.disabled


# ------------------------------------------------------------------------------ step-through
@pytest.fixture(scope="module")
def stepped():
    cfg = tiny_config()  # 2 layers, 2 heads, d_model 16, seq 8, float64
    model = cllm.Model(cfg, seed=0)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, cfg.vocab_size, size=(2, 8))
    tgt = rng.integers(0, cfg.vocab_size, size=(2, 8))
    _, loss, acts = model.forward(idx, tgt)
    trace = []
    model.backward(acts, trace=trace)
    return StepThrough.from_model(model, idx, tgt), acts, trace, loss


def test_steps_follow_the_store_then_the_backward_trace(stepped):
    st, acts, trace, loss = stepped
    assert st.names("forward") == acts.order and len(acts.order) == 32
    assert st.names("backward") == [name for name, _ in trace] and len(trace) == 19
    assert [ph for ph, _, _ in st.steps] == ["forward"] * 32 + ["backward"] * 19
    for ph, name, arr in st.steps:
        assert name in acts and arr.shape == acts[name].shape  # a gradient has its buffer's shape
    assert st.loss == loss
    dlogits = dict(trace)["logits"]
    onehot = np.eye(acts["probs"].shape[-1])[acts.targets]
    np.testing.assert_allclose(dlogits, (acts["probs"] - onehot) / acts.targets.size, atol=1e-15)


def test_next_prev_walk_and_labels(stepped):
    st = stepped[0]
    st.go(0)
    assert st.prev()["position"] == 0  # stays at the start
    assert st.current()["label"] == "forward 1/32: h.0.ln_1.in (2, 8, 16)"
    seen = [st.current()]
    while not st.at_end:
        seen.append(st.next())
    assert [d["position"] for d in seen] == list(range(51))
    assert st.next()["position"] == 50  # stays at the end
    assert seen[3]["label"] == "forward 4/32: h.0.ln_1.out (2, 8, 16)"
    assert seen[32]["label"] == "backward 1/19: logits (2, 8, 11)"
    assert seen[-1]["label"] == "backward 19/19: h.0.ln_1.in (2, 8, 16)"
    assert st.prev()["name"] == "h.0.ln_1.out" and st.position == 49
    d = st.go(5)
    assert d["name"] == "h.0.attn.probs" and d["shape"] == (2, 2, 8, 8)
    arr = st.steps[5][2]
    assert d["stats"] == pytest.approx(dict(mean=arr.mean(), std=arr.std(), min=arr.min(), max=arr.max()))
    assert d["stats"]["mean"] == pytest.approx(1 / 8)  # each row of probabilities sums to one


def test_heatmap_array_reduces_to_2d(stepped):
    st = stepped[0]
    probs = st.steps[5][2]
    np.testing.assert_array_equal(st.heatmap_array(5), probs[0, 0])  # first batch element, first head
    np.testing.assert_array_equal(heatmap_array(st.steps[0][2]), st.steps[0][2][0])  # (B, T, C) -> (T, C)
    assert heatmap_array(st.steps[1][2]).shape == (2, 8)  # LayerNorm mean (B, T) stays
    assert heatmap_array(np.arange(3.0)).shape == (1, 3) and heatmap_array(np.float64(2)).shape == (1, 1)
    with pytest.raises(ValueError):
        StepThrough([("sideways", "x", np.zeros(2))])


def test_step_widget_buttons_and_slider(stepped):
    st = stepped[0]
    st.go(0)
    view = StepThroughWidget(st)
    for attr, css in STEP_CSS_CLASSES.items():
        assert css in getattr(view, attr)._dom_classes, attr
    # the phase word is shown once, in its own colour, and the label beside it carries the rest
    assert ">forward<" in view.phase.value and "forward" not in view.label.value
    assert "<code>1/32: h.0.ln_1.in (2, 8, 16)</code>" == view.label.value and view.prev_button.disabled
    first_png = view.heatmap.value
    assert first_png[:4] == b"\x89PNG"
    view.next_button.click()
    view.next_button.click()
    assert view.slider.value == 2 and "3/32: h.0.ln_1.rstd" in view.label.value
    assert ">forward<" in view.phase.value and "mean" in view.stats.value and view.heatmap.value != first_png
    view.slider.value = 32  # the slider moves the walk too
    assert st.position == 32 and ">backward<" in view.phase.value
    assert view.label.value == "<code>1/19: logits (2, 8, 11)</code>"  # not "backward backward 1/19"
    view.prev_button.click()
    assert st.position == 31 and view.slider.value == 31
    view.slider.value = 50
    assert view.next_button.disabled and not view.prev_button.disabled


def test_label_in_phase_is_the_label_without_its_phase_word(stepped):
    st = stepped[0]
    for i in range(len(st)):
        d = st.describe(i)
        assert d["label"] == f"{d['phase']} {d['in_phase']}" and not d["in_phase"].startswith(d["phase"])
    assert st.describe(32)["in_phase"] == "1/19: logits (2, 8, 11)"


def test_token_text_makes_whitespace_visible():
    assert token_text(" ") == "\u2423" and token_text("\n") == "\\n" and token_text("\t") == "\\t"
    assert token_text("a") == "a" and token_text('"') == '"' and token_text("\u2019") == "\u2019"
    assert token_text("\x07") == "\\x07" and token_text("") == "\u2205"
    assert token_text(" the\n") == "\u2423the\\n"   # a multi-character (BPE) token
    tok = cllm.CharTokenizer.fit("ab \nc")
    assert token_labels(tok, tok.encode("a b\n")) == ["a", "\u2423", "b", "\\n"]
    assert token_labels(tok, np.arange(tok.vocab_size)) == ["\\n", "\u2423", "a", "b", "c"]


def test_heatmap_axes_show_the_characters():
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    st, model, tok, text = tiny_demo()
    chars = st.position_labels()
    assert chars == [token_text(c) for c in text[:8]] and chars[3] == "\u2423"  # 'The "whi': a visible space
    vocab = st.vocab_labels()
    assert len(vocab) == tok.vocab_size and vocab[:2] == ["\\n", "\u2423"]

    def ticks(position):
        ax = Figure().add_subplot()
        st.plot_heatmap(ax, position)
        return [t.get_text() for t in ax.get_yticklabels()], [t.get_text() for t in ax.get_xticklabels()], ax

    names = st.names()
    probs = names.index("h.0.attn.probs")
    rows, cols, ax = ticks(probs)             # attention: query rows and key columns are characters
    assert rows == chars and cols == chars and "query position" in ax.get_ylabel()
    rows, cols, ax = ticks(names.index("probs"))   # the predicted distribution: positions x vocabulary
    assert rows == chars and cols == vocab and ax.get_xlabel() == "next token"
    rows, cols, _ = ticks(len(st) - 1)        # d loss / d h.0.ln_1.in: positions x channels
    assert rows == chars and "\u2423" not in cols
    rows, cols, _ = ticks(names.index("h.0.ln_1.rstd"))  # (B, T): batch rows, no characters
    assert "\u2423" not in rows + cols
    # without a tokenizer the axes keep their numbers
    bare = StepThrough(st.steps, idx=st.idx)
    assert bare.position_labels() is None and bare.vocab_labels() is None
    ax = Figure().add_subplot()
    plot_heatmap(ax, st.steps[probs])
    assert [t.get_text() for t in ax.get_xticklabels()] != chars
    assert st.heatmap_png(probs)[:4] == b"\x89PNG"


def test_tiny_demo_on_real_text():
    st, model, tok, text = tiny_demo()
    assert "while" in text and tok.vocab_size == model.cfg.vocab_size
    assert len(st) == 51 and st.label(0).startswith("forward 1/32: h.0.ln_1.in (2, 8, 16)")
    assert tok.decode(st.idx[0]) == text[:8]


def test_a_failed_run_is_reported_not_lost(explorer, monkeypatch):
    import cllm.course.explorer
    from cllm.train import TrainingDiverged

    def diverge(*args, **kwargs):
        raise TrainingDiverged("step 7: loss is nan (lr 0.3)")

    monkeypatch.setattr(cllm.course.explorer, "run_training", diverge)
    explorer.start()
    assert explorer.wait(timeout=30) is None and explorer.runs == []
    assert explorer.status_kind == "error" and "step 7: loss is nan" in explorer.status_text
    assert explorer.final_loss.value == "final validation loss: (run failed)"
    assert not explorer.running and not explorer.train_button.disabled and explorer.stop_button.disabled

