"""Data parallelism on threads: the split step computes the one-thread step's loss and gradients."""
import numpy as np
import pytest

import cllm
from cllm import parallel
from cllm.parallel import DataParallel, auto_workers, blas_threads, shares


def model_of(dtype="float64", **kw):
    base = dict(vocab_size=23, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=8, dtype=dtype)
    base.update(kw)
    return cllm.Model(cllm.ModelConfig(**base), seed=3)


def batch(rows, T=8, V=23, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (rows, T)), rng.integers(0, V, (rows, T))


def test_shares_cover_the_rows_evenly():
    assert shares(12, 2) == [slice(0, 6), slice(6, 12)]
    assert shares(5, 2) == [slice(0, 2), slice(2, 5)]
    assert shares(2, 4) == [slice(0, 1), slice(1, 2)]  # never more shares than rows
    assert shares(7, 1) == [slice(0, 7)]
    for rows in range(1, 20):
        for w in range(1, 6):
            parts = shares(rows, w)
            assert sum(s.stop - s.start for s in parts) == rows and all(s.stop > s.start for s in parts)


def test_auto_workers_needs_enough_tokens_per_worker():
    assert auto_workers(12, 64, cores=2) == 2  # the small configuration: 768 tokens
    assert auto_workers(4, 32, cores=2) == 1  # the seed configuration: 128 tokens, splitting is slower
    assert auto_workers(12, 64, cores=1) == 1
    assert auto_workers(2, 4096, cores=8) == 2  # at most one worker per row
    assert auto_workers(64, 64, cores=8) == 8


@pytest.mark.parametrize("workers,rows", [(2, 6), (2, 5), (3, 7), (4, 3)])
@pytest.mark.parametrize("tie", [True, False])
def test_split_step_equals_one_thread_step(workers, rows, tie):
    model = model_of(tie_weights=tie)
    x, y = batch(rows)
    _, loss, acts = model.forward(x, y)
    want = model.backward(acts)
    dp = DataParallel(model, workers)
    got_loss, parts = dp.forward(x, y)
    assert len(parts) == min(workers, rows)
    got = dp.backward(parts, model.zeros_like_params())
    assert abs(got_loss - loss) < 1e-12
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-11, atol=1e-14, err_msg=k)
    # the buffers are reused: a second step gives the same again
    got_loss2, parts = dp.forward(x, y)
    again = dp.backward(parts, model.zeros_like_params())
    assert got_loss2 == got_loss and all(np.array_equal(again[k], got[k]) for k in got)
    dp.close()


def test_split_step_counts_the_regulariser_once():
    """Each share's loss includes the GCD regulariser; weighting the shares must not multiply it."""
    model = model_of(lattice_reg=0.05)
    x, y = batch(6)
    _, loss, acts = model.forward(x, y)
    want = model.backward(acts)
    dp = DataParallel(model, 2)
    got_loss, parts = dp.forward(x, y)
    got = dp.backward(parts, model.zeros_like_params())
    assert abs(got_loss - loss) < 1e-12
    np.testing.assert_allclose(got["wte"], want["wte"], rtol=1e-11, atol=1e-14)


def test_backward_scale_scales_every_gradient():
    model = model_of(lattice_reg=0.05)
    x, y = batch(3)
    acts = model.forward(x, y)[2]
    one = model.backward(acts)
    scaled = model.backward(acts, scale=0.25)
    for k in one:
        np.testing.assert_allclose(scaled[k], 0.25 * one[k], rtol=1e-13, atol=1e-16, err_msg=k)
    dlogits = np.ones_like(acts["logits"])
    before = dlogits.copy()
    model.backward(acts, dlogits=dlogits, scale=2.0)
    assert np.array_equal(dlogits, before)  # the caller's dlogits are not scaled in place


def test_dropout_masks_come_from_the_callers_generator():
    model = model_of(dropout=0.2)
    x, y = batch(6)
    dp = DataParallel(model, 2)
    runs = []
    for _ in range(2):
        loss, parts = dp.forward(x, y, rng=np.random.default_rng(7))
        runs.append((loss, dp.backward(parts, model.zeros_like_params())))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    other, _ = dp.forward(x, y, rng=np.random.default_rng(8))
    assert other != runs[0][0]  # a different generator, different masks
    no_drop, _ = dp.forward(x, y, train=False)
    assert np.isfinite(no_drop) and no_drop != runs[0][0]


def test_a_workers_error_reaches_the_caller():
    model = model_of()
    x, y = batch(4)
    x[3, 0] = 99  # out of the vocabulary, in the second share
    with pytest.raises(ValueError, match="token ids"):
        DataParallel(model, 2).forward(x, y)


def test_blas_threads_are_restored():
    controls = parallel.blas_controls()
    if controls is None:
        pytest.skip("numpy's BLAS is not an OpenBLAS this module can control")
    set_n, get_n = controls
    before = get_n()
    with blas_threads(1):
        assert get_n() == 1
    assert get_n() == before
    with pytest.raises(RuntimeError):
        with blas_threads(1):
            raise RuntimeError("inside")
    assert get_n() == before


def test_without_blas_control_one_worker(monkeypatch):
    monkeypatch.setattr(parallel, "_BLAS", False)
    assert DataParallel(model_of(), 4).workers == 1


def test_bad_workers_are_rejected():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="workers"):
            DataParallel(model_of(), bad)
    with pytest.raises(ValueError, match="workers"):
        cllm.TrainConfig(workers=0)
