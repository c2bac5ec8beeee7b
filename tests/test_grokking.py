"""Modular arithmetic, clock features and the grokking experiment: exact data, the accuracy, the
features' orthogonality and rank, the model's ignore index and fixed F, a run that memorises, the
driver at a tiny budget."""
import json
import subprocess
import sys

import numpy as np
import pytest

import cllm
from cllm import ops
from cllm.config import ModelConfig
from cllm.gradcheck import check_model, perturb
from cllm.lab import grokking as gk
from cllm.lab.modular import (IGNORE_INDEX, OPS, accuracy, encode, fourier_spectrum, make_dataset, modular_table,
                              task_features, top_frequencies)
from cllm.lattice.features import (crt_clock_features, fourier_features, fourier_frequencies, prime_power_factors,
                                   random_features)
from cllm.parallel import DataParallel
from cllm.train import Trainer

PY = {"add": lambda a, b, m: (a + b) % m, "sub": lambda a, b, m: (a - b) % m, "mul": lambda a, b, m: (a * b) % m,
      "div": lambda a, b, m: next(c for c in range(m) if (c * b) % m == a)}


# ------------------------------------------------------------------------------------------ the data
@pytest.mark.parametrize("m", [2, 7, 12, 13])
@pytest.mark.parametrize("op", OPS)
def test_table_every_pair_once_with_the_right_answer(m, op):
    if op == "div" and m == 12:
        pytest.skip("division needs a prime modulus (tested below)")
    a, b, c = modular_table(m, op)
    n = m * (m - 1) if op == "div" else m * m
    assert a.size == b.size == c.size == n
    pairs = set(zip(a.tolist(), b.tolist()))
    assert len(pairs) == n                                               # every pair once
    assert pairs == {(x, y) for x in range(m) for y in range(1 if op == "div" else 0, m)}
    assert all(int(ci) == PY[op](int(ai), int(bi), m) for ai, bi, ci in zip(a, b, c))


def test_division_needs_a_prime_modulus():
    with pytest.raises(ValueError, match="prime modulus"):
        modular_table(12, "div")
    with pytest.raises(ValueError, match="op must be one of"):
        modular_table(7, "pow")
    with pytest.raises(ValueError, match="modulus"):
        modular_table(1, "add")


@pytest.mark.parametrize("op", ["add", "div"])
def test_split_is_exact_seeded_and_leak_free(op):
    m = 13
    d = make_dataset(m, op, train_frac=0.3, seed=4)
    P = m * (m - 1) if op == "div" else m * m
    assert len(d.x_train) == round(0.3 * P) and len(d.x_train) + len(d.x_val) == P
    tr = set(map(tuple, d.x_train[:, :2].tolist()))
    va = set(map(tuple, d.x_val[:, :2].tolist()))
    assert not tr & va and len(tr | va) == P                             # no pair in both, none lost
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val)):
        assert (x[:, 2] == m).all() and d.eq_token == m and d.vocab_size == m + 1
        assert (y[:, :2] == IGNORE_INDEX).all()                          # loss at the answer only
        assert all(int(c) == PY[op](int(a), int(b), m) for (a, b, _), c in zip(x, y[:, 2]))
    again = make_dataset(m, op, train_frac=0.3, seed=4)
    assert np.array_equal(again.x_train, d.x_train)
    other = make_dataset(m, op, train_frac=0.3, seed=5)
    assert not np.array_equal(other.x_train, d.x_train)
    with pytest.raises(ValueError, match="train_frac"):
        make_dataset(m, op, train_frac=1.0)


def test_accuracy_counts_scored_positions_only():
    x, y = encode([1, 2, 3], [0, 0, 0], [1, 2, 0], 4)                    # y = [[-1, -1, c], ...]
    logits = np.zeros((3, 3, 5))
    logits[0, 2, 1] = logits[1, 2, 2] = 1.0                              # right for rows 0 and 1
    logits[2, 2, 3] = 1.0                                                # wrong for row 2
    logits[:, :2, 4] = 9.0                                               # the ignored positions do not count
    assert accuracy(logits, y) == pytest.approx(2 / 3)
    logits[2, 2, 0] = 2.0
    assert accuracy(logits, y) == 1.0
    with pytest.raises(ValueError, match="no scored targets"):
        accuracy(logits[:, :2], y[:, :2])


# ------------------------------------------------------------------------------------- the features
@pytest.mark.parametrize("m", [2, 7, 12, 60, 113])
def test_clock_features_orthogonal_full_rank_of_the_zero_mean_space(m):
    F = fourier_features(np.arange(m), m)                                # (m, m - 1)
    assert F.shape == (m, m - 1) and len(fourier_frequencies(m)) == m - 1
    np.testing.assert_allclose(F.T @ F, m * np.eye(m - 1), atol=1e-9)   # orthogonal, unit RMS columns
    np.testing.assert_allclose(F.sum(axis=0), 0, atol=1e-9)              # orthogonal to the constant
    assert np.linalg.matrix_rank(np.concatenate([np.ones((m, 1)), F], axis=1)) == m
    np.testing.assert_allclose(fourier_features(np.arange(m) + 3 * m, m), F, atol=1e-9)  # a function of a mod m


@pytest.mark.parametrize("m,factors,rank", [(60, [4, 3, 5], 9), (12, [4, 3], 5), (113, [113], 112)])
def test_crt_clocks(m, factors, rank):
    assert prime_power_factors(m) == factors
    C = crt_clock_features(np.arange(m), m)
    assert C.shape == (m, rank) and np.linalg.matrix_rank(C) == rank
    F = fourier_features(np.arange(m), m)
    resid = C - F @ np.linalg.lstsq(F, C, rcond=None)[0]                 # the CRT clocks lie in the clock's span
    assert np.abs(resid).max() < 1e-9
    # the residues mod every prime power determine a mod m: distinct rows
    assert len({tuple(np.round(r, 9)) for r in C}) == m


def test_task_features_and_the_random_control():
    for kind, k in (("clock", 59), ("crt", 9), ("random", 59)):
        F = task_features(60, kind, seed=1)
        assert F.shape == (61, k) and not F[60].any()                    # "=" has a zero row
    R = task_features(60, "random", seed=1, rank=9)
    assert R.shape == (61, 9) and np.linalg.matrix_rank(R[:60]) == 9
    assert np.linalg.matrix_rank(task_features(60, "random", seed=1)[:60]) == 59
    np.testing.assert_allclose(np.sqrt(np.mean(R[:60] ** 2, axis=0)), 1.0)
    assert not np.array_equal(task_features(60, "random", seed=2), task_features(60, "random", seed=1))
    with pytest.raises(ValueError, match="kind must be"):
        task_features(60, "prime")


def test_random_features_is_the_old_inline_control():
    # the lattice experiment's random-F control was G / rms(G) from rng [seed, 4]; it must stay the same
    G = np.random.default_rng([3, 4]).standard_normal((11, 5))
    np.testing.assert_array_equal(random_features((11, 5), np.random.default_rng([3, 4])),
                                  G / np.sqrt(np.mean(G * G, axis=0)))


def test_fourier_spectrum_finds_a_planted_clock():
    m, C = 31, 6
    a = np.arange(m)
    E = np.zeros((m + 1, C))
    E[:m, 0] = np.cos(2 * np.pi * 7 * a / m)
    E[:m, 1] = 0.5 * np.sin(2 * np.pi * 11 * a / m)
    E[:m, 2] = 0.3                                                       # the mean: k = 0
    E[m] = 5.0                                                           # "=": not a number, not counted
    s = fourier_spectrum(E, m)
    assert s.shape == (16,)
    np.testing.assert_allclose(s.sum(), m * np.sum(E[:m] ** 2))          # Parseval
    top, share = top_frequencies(s, 2)
    assert top == [7, 11] and share == pytest.approx(1.0)
    np.testing.assert_allclose(s[7] / s[11], 4.0)
    assert top_frequencies(fourier_spectrum(np.random.default_rng(0).standard_normal((m, 64)), m))[1] < 0.6


# ------------------------------------------------------------------------- the model's new inputs
def test_relu_gradcheck_with_ignored_targets_and_given_features(rng):
    F = task_features(7, "clock")                                        # (8, 6)
    cfg = ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_seq_len=3, dtype="float64",
                      activation="relu", tie_weights=False, embedding="lattice", lattice_features=6)
    model = cllm.Model(cfg, seed=0, features=F)
    perturb(model.params, 0.3, 1)
    d = make_dataset(7, "add", 0.5, seed=0)
    report = check_model(model, d.x_train[:6], d.y_train[:6])
    assert report.max_rel_error < 1e-6, report.table()
    assert (ops.relu_forward(np.array([-1.0, 0.0, 2.0])) == [0.0, 0.0, 2.0]).all()


def test_ignore_index_leaves_positions_out_of_the_loss_and_the_gradient():
    cfg = ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_seq_len=3, dtype="float64")
    model = cllm.Model(cfg, seed=0)
    x, y = encode([1, 2, 3, 4], [5, 6, 0, 1], [6, 1, 3, 5], 7)
    logits, loss, acts = model.forward(x, y)
    logp = logits[:, 2] - np.log(np.exp(logits[:, 2]).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-np.mean(logp[np.arange(4), y[:, 2]]), rel=1e-12)
    full = np.stack([x[:, 1], x[:, 2], y[:, 2]], axis=1)                # any targets at the ignored places
    g = model.backward(acts)
    _, _, acts2 = model.forward(x, np.where(y == IGNORE_INDEX, full, y))
    assert not np.allclose(model.backward(acts2)["wpe"], g["wpe"])       # they would matter if scored
    with pytest.raises(ValueError, match="token ids"):
        model.forward(x, np.full_like(y, -2))
    with pytest.raises(ValueError, match="token ids"):
        model.forward(np.full_like(x, IGNORE_INDEX), y)                  # inputs may not be ignored


def test_data_parallel_weights_shares_by_scored_targets():
    cfg = ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_seq_len=3, dtype="float64")
    model = cllm.Model(cfg, seed=0)
    x, y = encode([1, 2, 3, 4], [5, 6, 0, 1], [6, 1, 3, 5], 7)
    y = y.copy()
    y[0, :2] = [3, 4]                                                    # the first share scores 4 targets, the second 2
    _, loss, acts = model.forward(x, y)
    ref = model.backward(acts)
    dp = DataParallel(model, 2)
    if dp.workers < 2:
        pytest.skip("BLAS threads cannot be controlled here: DataParallel runs one worker")
    loss2, parts = dp.forward(x, y)
    g = dp.backward(parts, model.zeros_like_params())
    dp.close()
    assert loss2 == pytest.approx(loss, rel=1e-12)
    for k in ref:
        np.testing.assert_allclose(g[k], ref[k], rtol=1e-10, atol=1e-14)


def test_model_takes_a_fixed_feature_matrix():
    F = task_features(7, "clock")
    cfg = ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_seq_len=3,
                      embedding="lattice", lattice_features=6)
    model = cllm.Model(cfg, seed=0, features=F)
    plain = cllm.Model(cfg, seed=0)
    assert model.buffers["lattice.features"].dtype == np.float32
    np.testing.assert_allclose(model.buffers["lattice.features"], F, rtol=1e-6)
    for k in plain.params:                                               # F does not change the init
        np.testing.assert_array_equal(model.params[k], plain.params[k])
    P = model.params
    np.testing.assert_allclose(model.embedding_matrix(), F.astype(np.float32) @ P["lattice.proj"] + P["wte"], rtol=1e-6)
    assert model.features_given and not plain.features_given
    ids = np.tile(np.arange(8), 4)
    with pytest.raises(ValueError, match="checkpoint cannot restore"):   # its F would be lost on resume
        Trainer(model, ids, ids, cllm.TrainConfig(seq_len=3, batch_size=2), run_dir="never-written")
    Trainer(model, ids, ids, cllm.TrainConfig(seq_len=3, batch_size=2), progress=False)  # no run_dir: fine
    with pytest.raises(ValueError, match="shape"):
        cllm.Model(cfg, seed=0, features=F[:, :5])
    with pytest.raises(ValueError, match="embedding='lattice'"):
        cllm.Model(ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_seq_len=3), features=F)


# ---------------------------------------------------------------------------------- runs and driver
def test_a_fast_run_memorises_a_tiny_modulus():
    r = gk.run_one(7, "learned", seed=0, steps=150, train_frac=0.5, eval_every=10)
    assert r["final_train_acc"] == 1.0 and r["steps_to_train99"] is not None
    assert r["n_train"] == 24 and r["n_val"] == 25
    assert r["curve"]["train_acc"][0] < 0.5                              # it did learn: chance at step 0
    assert len(r["spectrum"]) == 4 and len(r["top5"]) == 3               # 7 // 2 = 3 frequencies


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grok")
    settings = {7: dict(train_frac=0.5, steps=20, variants=("learned", "clock", "random")),
                12: dict(train_frac=0.5, steps=20, variants=("learned", "crt", "random-crt"))}
    lines = []
    payload = gk.run_grokking(seeds=2, out=out, settings=settings, workers=1, eval_every=5, log=lines.append)
    return out, payload, lines


def test_driver_runs_and_writes_everything(tiny_run):
    out, payload, lines = tiny_run
    assert payload["complete"] and len(payload["runs"]) == 12
    assert sum(line.startswith("run ") for line in lines) == 12         # progress: one line per run
    saved = json.loads((out / "grokking.json").read_text())
    assert saved["runs"] == payload["runs"]
    md = (out / "grokking.md").read_text()
    assert "| 12 | crt | 2 |" in md and "| 7 | random | 2 |" in md
    for name in ("grokking_curves.png", "grokking_spectra.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = gk.load_results(out / "grokking.json")
    assert gk.format_table(again["summary"]) in md


def test_driver_pairs_variants_on_the_same_split_and_init(tiny_run):
    _, payload, _ = tiny_run
    by = {(r["m"], r["variant"], r["seed"]): r for r in payload["runs"]}
    for m, variants in ((7, ("learned", "clock", "random")), (12, ("learned", "crt", "random-crt"))):
        for s in (0, 1):
            assert len({by[(m, v, s)]["n_train"] for v in variants}) == 1
            # the two lattice variants differ only in F: W and R start equal, F W differs
            assert by[(m, variants[1], s)]["curve"]["train_loss"][0] != by[(m, variants[2], s)]["curve"]["train_loss"][0]
    net_a, net_b = gk.build_model(12, "crt", 0), gk.build_model(12, "random-crt", 0)
    assert net_a.params["lattice.proj"].shape == net_b.params["lattice.proj"].shape == (5, 32)
    np.testing.assert_array_equal(net_a.params["lattice.proj"], net_b.params["lattice.proj"])
    s = payload["summary"]["12"]["variants"]
    assert s["crt"]["delta_val_acc"][2] == 2 and s["learned"]["n"] == 2


def test_driver_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="seeds"):
        gk.run_grokking(seeds=0, out=tmp_path)
    with pytest.raises(ValueError, match="unknown variant"):
        gk.run_grokking(seeds=1, out=tmp_path, settings={7: dict(train_frac=0.5, steps=5, variants=("bogus",))})
    with pytest.raises(ValueError, match="composite"):
        gk.run_grokking(seeds=1, out=tmp_path, settings={7: dict(train_frac=0.5, steps=5, variants=("crt",))})
    assert not list(tmp_path.iterdir())                                  # nothing written
    cmd = [sys.executable, "-m", "cllm", "experiment", "grokking", "--seeds", "0", "--out", str(tmp_path / "x")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("cllm: error:") and len(res.stderr.splitlines()) == 1
    assert not (tmp_path / "x").exists()
