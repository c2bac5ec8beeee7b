"""The lattice experiment's machinery at a tiny budget: data order, results, table, figure, speed."""
import json
import math
import time

import numpy as np
import pytest

from cllm.lab import lattice_experiment as ex
from cllm.data import builtin_corpus
from cllm.lattice.model import word_lattice_codes
from cllm.lattice.similarity import gcd_similarity_matrix

TINY_MODEL = dict(d_model=16, n_layers=1, n_heads=2, d_ff=32)
TINY_TRAIN = dict(seq_len=16, batch_size=4)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lattice")
    lines = []
    t0 = time.process_time()
    payload = ex.run_lattice(seeds=2, steps=20, out=out, text=builtin_corpus()[:30000], max_vocab=300,
                             model=TINY_MODEL, train=TINY_TRAIN, eval_windows=8, log=lines.append)
    return payload, out, lines, time.process_time() - t0


def test_runs_fast_and_complete(tiny_run):
    payload, out, lines, cpu_seconds = tiny_run
    assert cpu_seconds < 20          # CPU time, not wall time: the test machine may be shared
    assert payload["complete"]
    assert len(payload["runs"]) == 2 * 2 * len(ex.VARIANTS)
    assert sum(line.startswith("run ") for line in lines) == len(payload["runs"])   # one line per run


def test_same_data_order_across_variants(tiny_run):
    runs = tiny_run[0]["runs"]
    for level in ("char", "word"):
        digests = {}
        for r in runs:
            if r["level"] == level:
                digests.setdefault(r["seed"], set()).add(r["data_digest"])
        assert all(len(d) == 1 for d in digests.values())          # every variant of a seed: same batches
        assert digests[0] != digests[1]                              # different seeds: different batches


def test_results_structure(tiny_run):
    payload = tiny_run[0]
    r = payload["runs"][0]
    assert r["val_step"] == list(range(0, 21))                      # step 0 then every step (20 // 20)
    assert len(r["val_loss"]) == len(r["val_step"]) and len(r["train_loss"]) == 20
    assert all(math.isfinite(v) for v in r["val_loss"])
    assert math.isclose(r["val_loss"][0], math.log(payload["levels"]["char"]["vocab_size"]), abs_tol=0.1)
    by = {(x["level"], x["variant"], x["seed"]): x for x in payload["runs"]}
    # same model seed and lattice init: at step 0 the lattice variants (beta = 0) give identical losses
    assert by[("char", "lattice", 0)]["val_loss"][0] == by[("char", "lattice+attn", 0)]["val_loss"][0]
    assert "lattice_beta_abs_mean" in by[("word", "lattice+attn", 1)]
    s = payload["summary"]
    assert set(s) == {"char", "word"}
    for block in s.values():
        assert block["report_steps"] == [2, 5, 10, 20]
        assert set(block["variants"]) == set(ex.VARIANTS)
        assert block["variants"]["learned"]["steps_to_threshold"]["reached"] == 2   # threshold from the baseline
        for row in block["variants"].values():
            assert row["n"] == 2 and set(row["val_at"]) == {"2", "5", "10", "20"}
    assert payload["levels"]["char"]["max_offdiag_similarity"] == 0.0   # distinct primes: S = identity


def test_files_written(tiny_run):
    payload, out, _, _ = tiny_run
    saved = json.loads((out / "lattice_experiment.json").read_text())
    assert len(saved["runs"]) == len(payload["runs"]) and saved["complete"]
    md = (out / "lattice_experiment.md").read_text()
    assert "| learned | 2 |" in md and "random-F" in md and "steps to val ≤" in md
    png = (out / "lattice_experiment.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the reports rebuild from the JSON alone (what the notebook does)
    again = ex.load_results(out / "lattice_experiment.json")
    table, _ = ex.write_reports(again, out, plot=False)
    assert table in (out / "lattice_experiment.md").read_text()


def test_word_codes_distinct_and_composite():
    vocab = ["<unk>", " ", ".", "walk", "walked", "walking", "jumped", "42", "cat"]
    train = np.array([1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 3, 1])
    codes = np.array(word_lattice_codes(vocab, train))
    assert len(set(codes.tolist())) == len(codes) and codes.min() >= 2
    S = gcd_similarity_matrix(codes)
    v = vocab.index
    assert S[v("walk"), v("walked")] > 0 and S[v("walked"), v("walking")] > 0    # same stem
    assert S[v("walked"), v("jumped")] > 0                                        # same affix
    assert S[v("walking"), v("jumped")] == 0
    for t in ("<unk>", " ", ".", "42"):                                           # non-words: own primes
        assert np.count_nonzero(S[v(t)]) == 1
    assert codes[v(" ")] < codes[v(".")]                                          # by training frequency
    # realistic vocabulary: still distinct and >= 2
    from cllm.tokenizer import WordTokenizer

    text = builtin_corpus()[:20000]
    tok = WordTokenizer.fit(text, max_vocab=200)
    codes = word_lattice_codes(tok.vocab, tok.encode(text))
    assert len(set(codes)) == len(codes) == 200 and min(codes) >= 2


def test_threshold_and_steps_to():
    runs = [dict(variant="learned", seed=s, val_step=[0, 5, 10], val_loss=[3.0, 2.5, 2.0]) for s in (0, 1)]
    assert ex.threshold_for(runs, 10) == pytest.approx(2.5)
    assert ex.steps_to(runs[0], 2.5) == 5
    assert ex.steps_to(runs[0], 1.0) is None
    assert ex.report_steps(400, 20) == [40, 100, 200, 400]


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        ex.run_experiment("nope", out=tmp_path)
    with pytest.raises(ValueError):
        ex.run_lattice(seeds=0, out=tmp_path)
    with pytest.raises(ValueError):
        ex.run_lattice(variants=("bogus",), out=tmp_path)


def test_figure_keeps_the_early_steps_in_view():
    """The y-axis spans every band after step 0, so an early lead is visible; step 0 may run off the top."""
    from cllm.plots import close, plot_lattice_experiment

    steps = list(range(0, 401, 20))                  # the experiment's grid: step 20 is 5% of the run
    tail = list(np.linspace(2.9, 2.7, len(steps) - 3))
    early = {"learned": [4.6, 3.8, 3.1] + tail, "lattice": [4.6, 3.4, 3.0] + [x + 0.1 for x in tail]}
    runs = [dict(level="char", variant=v, seed=s, val_step=steps, val_loss=[x + 0.01 * s for x in curve])
            for v, curve in early.items() for s in (0, 1)]
    summary = {"char": {"variants": list(early), "threshold": 2.85}}
    fig = plot_lattice_experiment(runs, summary)
    lo, hi = fig.axes[0].get_ylim()
    close(fig)
    assert hi > 3.8 + 0.01 and lo < 2.7            # the learned curve at step 20 and the lowest point are shown
    assert hi < 4.6                                 # step 0 (log V for all) does not set the scale
