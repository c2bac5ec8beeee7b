"""The trainer: learning on real text, resume bit for bit, the divergence guard, gradient accumulation."""
import math

import numpy as np
import pytest

import cllm
from cllm.data import builtin_corpus, split
from cllm.tokenizer import CharTokenizer
from cllm.train import Trainer, TrainingDiverged


@pytest.fixture(scope="module")
def corpus():
    text = builtin_corpus()[:60_000]
    tok = CharTokenizer.fit(text)
    train, val = split(tok.encode(text), 0.1)
    return tok, train, val


def small(tok, **kw):
    base = dict(vocab_size=tok.vocab_size, d_model=48, n_layers=2, n_heads=4, d_ff=192, max_seq_len=32)
    base.update(kw)
    return cllm.ModelConfig(**base)


def unigram_cross_entropy(train, val, V):
    """Loss of the best model that ignores context: character frequencies of the training split
    (add-one smoothed), scored on the validation split."""
    counts = np.bincount(train, minlength=V) + 1.0
    p = counts / counts.sum()
    return float(-np.mean(np.log(p[val])))


def test_200_steps_learn_beyond_character_frequencies(corpus):
    """After 200 steps the validation loss must beat the unigram baseline by a clear margin: a model
    that only learned how often each character occurs cannot get below that baseline, so getting
    0.25 nats under it means the model uses its context."""
    tok, train, val = corpus
    cfg = cllm.TrainConfig(batch_size=8, seq_len=32, steps=200, lr=3e-3, min_lr=3e-4, warmup_steps=20,
                           lr_decay_steps=200, eval_interval=100, eval_max_batches=None)
    trainer = Trainer(cllm.Model(small(tok), seed=0), train, val, cfg, progress=False)
    history = trainer.train()
    baseline = unigram_cross_entropy(train, val, tok.vocab_size)
    assert history.val_loss[0] < math.log(tok.vocab_size)
    assert history.val_loss[-1] < baseline - 0.25, (history.val_loss, baseline)
    assert len(history.train_loss) == 200 and len(history.val_loss) == 2
    assert all(np.isfinite(history.grad_norm)) and len(history.update_ratio) == 20
    assert 0 < np.median(history.update_ratio) < 0.1


def _params(trainer):
    return {k: v.copy() for k, v in trainer.model.params.items()}


@pytest.mark.parametrize("accum,dropout,workers", [(1, 0.0, None), (2, 0.1, None), (1, 0.1, 2), (2, 0.0, 3)])
def test_resume_is_bit_identical(corpus, tmp_path, accum, dropout, workers):
    tok, train, val = corpus
    cfg = cllm.TrainConfig(batch_size=4, seq_len=16, steps=20, eval_interval=5, eval_max_batches=2,
                           checkpoint_interval=10, warmup_steps=4, lr_decay_steps=20, grad_accum=accum,
                           workers=workers)
    mcfg = small(tok, d_model=16, n_heads=2, d_ff=32, max_seq_len=16, dropout=dropout)

    straight = Trainer(cllm.Model(mcfg, seed=1), train, val, cfg, tokenizer=tok, run_dir=tmp_path / "a", progress=False)
    straight.train()

    first = Trainer(cllm.Model(mcfg, seed=1), train, val, cfg, tokenizer=tok, run_dir=tmp_path / "b", progress=False)
    first.train(steps=10)  # saves a checkpoint at step 10
    assert first.step == 10
    resumed = Trainer.resume(tmp_path / "b", train, val, progress=False)
    assert resumed.step == 10 and resumed.tokenizer == tok
    resumed.train()

    assert resumed.history.train_loss == straight.history.train_loss
    assert resumed.history.val_loss == straight.history.val_loss
    a, b = _params(straight), _params(resumed)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    sa, sb = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_non_finite_loss_stops_with_step_tensor_and_lr(corpus, tmp_path):
    tok, train, val = corpus
    cfg = cllm.TrainConfig(batch_size=2, seq_len=16, steps=10, checkpoint_interval=3, eval_interval=100)
    model = cllm.Model(small(tok, d_model=16, n_heads=2, d_ff=32, max_seq_len=16), seed=0)
    trainer = Trainer(model, train, val, cfg, run_dir=tmp_path, progress=False)
    trainer.train(steps=3)  # a good checkpoint at step 3
    model.params["h.0.mlp.c_fc.weight"][0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match=r"step 3: loss is nan \(lr [0-9.e-]+\).*step_000003"):
        trainer.train()
    assert (tmp_path / "diverged" / "step_000003.npz").exists()
    assert cllm.checkpoint.load_checkpoint(tmp_path).step == 3  # the last good checkpoint is kept


def test_non_finite_gradient_names_the_tensor(corpus, monkeypatch):
    tok, train, val = corpus
    cfg = cllm.TrainConfig(batch_size=2, seq_len=16, steps=5)
    model = cllm.Model(small(tok, d_model=16, n_heads=2, d_ff=32, max_seq_len=16), seed=0)
    trainer = Trainer(model, train, val, cfg, progress=False)
    real = model.backward

    def poisoned(acts, **kwargs):
        g = real(acts, **kwargs)
        g["h.1.attn.c_proj.weight"][1, 2] = np.inf
        return g

    monkeypatch.setattr(model, "backward", poisoned)
    before = model.params["wte"].copy()
    with pytest.raises(TrainingDiverged, match=r"step 0: gradient of h\.1\.attn\.c_proj\.weight is not finite"):
        trainer.train()
    assert np.array_equal(before, model.params["wte"])  # no update was applied


def test_gradient_accumulation_equals_big_batch(corpus):
    """Two micro-batches of 4 accumulated with weight 1/2 give the gradient of the batch of 8."""
    tok, train, _ = corpus
    model = cllm.Model(small(tok, dtype="float64", d_model=16, n_heads=2, d_ff=32, max_seq_len=16), seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, tok.vocab_size, (8, 16))
    y = rng.integers(0, tok.vocab_size, (8, 16))
    full = model.backward(model.forward(x, y)[2])
    acc = cllm.optim.zeros_like_grads(model.params)
    for s in (slice(0, 4), slice(4, 8)):
        cllm.optim.accumulate(acc, model.backward(model.forward(x[s], y[s])[2]), 0.5)
    for k in full:
        np.testing.assert_allclose(acc[k], full[k], rtol=1e-10, atol=1e-14)


def test_workers_change_only_the_rounding(corpus):
    """Training on 1 and on 3 data-parallel workers (float64, no dropout) follows the same path."""
    tok, train, val = corpus
    losses = {}
    for workers in (1, 3):
        cfg = cllm.TrainConfig(batch_size=6, seq_len=16, steps=8, eval_interval=4, eval_max_batches=2,
                               warmup_steps=2, lr_decay_steps=8, workers=workers)
        model = cllm.Model(small(tok, dtype="float64", d_model=16, n_heads=2, d_ff=32, max_seq_len=16), seed=0)
        trainer = Trainer(model, train, val, cfg, progress=False)
        assert trainer.parallel.workers == workers
        losses[workers] = trainer.train().train_loss + trainer.history.val_loss
    np.testing.assert_allclose(losses[3], losses[1], rtol=1e-10)


def test_callbacks_and_stop(corpus):
    tok, train, val = corpus
    cfg = cllm.TrainConfig(batch_size=2, seq_len=16, steps=50, eval_interval=1000)
    trainer = Trainer(cllm.Model(small(tok, d_model=16, n_heads=2, d_ff=32, max_seq_len=16), 0), train, val, cfg,
                      progress=False)
    seen = []

    def cb(tr, event, info):
        seen.append(event)
        if event == "step" and info["step"] == 6:
            tr.stop_requested = True

    trainer.callbacks.append(cb)
    history = trainer.train()
    assert trainer.step == 7 and len(history.step) == 7
    assert seen.count("step") == 7 and seen[-2:] == ["eval", "end"]


def test_evaluate_uses_every_window(corpus):
    tok, _, val = corpus
    cfg = cllm.TrainConfig(batch_size=3, seq_len=16)
    model = cllm.Model(small(tok, d_model=16, n_heads=2, d_ff=32, max_seq_len=16), 0)
    trainer = Trainer(model, val, val, cfg, progress=False)
    n = (len(val) - 1) // 16
    x = np.stack([val[i * 16:(i + 1) * 16] for i in range(n)])
    y = np.stack([val[i * 16 + 1:(i + 1) * 16 + 1] for i in range(n)])
    expected = model.forward(x, y, train=False)[1]
    assert abs(trainer.evaluate() - expected) < 1e-5


def test_trainer_rejects_bad_setup(corpus):
    tok, train, val = corpus
    model = cllm.Model(small(tok), 0)
    with pytest.raises(ValueError, match="max_seq_len"):
        Trainer(model, train, val, cllm.TrainConfig(seq_len=64))
    with pytest.raises(ValueError, match="tokens"):
        Trainer(model, train[:10], val, cllm.TrainConfig(seq_len=32))
    with pytest.raises(ValueError, match="lr"):
        cllm.TrainConfig(lr=0)


def _tiny_trainer(corpus, run_dir, **cfg):
    tok, train, val = corpus
    base = dict(batch_size=2, seq_len=16, steps=10, eval_interval=100, eval_max_batches=2)
    base.update(cfg)
    model = cllm.Model(small(tok, d_model=16, n_heads=2, d_ff=32, max_seq_len=16), seed=0)
    return Trainer(model, train, val, cllm.TrainConfig(**base), tokenizer=tok, run_dir=run_dir, progress=False)


@pytest.mark.parametrize("interval", [1, 500])
def test_an_update_that_overflows_the_parameters_is_caught_before_any_save(corpus, tmp_path, interval):
    """lr 1e39: the first update itself makes the weights infinite; the loss of step 0 was finite."""
    trainer = _tiny_trainer(corpus, tmp_path, lr=1e39, warmup_steps=0, steps=1, checkpoint_interval=interval)
    with pytest.raises(TrainingDiverged, match=r"step 1: parameter \S+ is not finite after the update \(lr 1e\+39\)") as err:
        trainer.train()
    assert cllm.checkpoint.list_checkpoints(tmp_path) == [] and not (tmp_path / "latest").exists()
    assert "last good checkpoint" not in str(err.value)  # nothing non-finite was saved, nor named good
    assert (tmp_path / "diverged" / "step_000001.npz").exists()


def test_a_non_finite_validation_loss_stops_before_the_save(corpus, tmp_path, monkeypatch):
    trainer = _tiny_trainer(corpus, tmp_path, steps=2)
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: float("inf"))
    with pytest.raises(TrainingDiverged, match=r"step 2: validation loss is inf"):
        trainer.train()
    assert cllm.checkpoint.list_checkpoints(tmp_path) == []


def test_a_failed_divergence_dump_keeps_the_divergence_message(corpus, tmp_path, monkeypatch):
    import errno

    trainer = _tiny_trainer(corpus, tmp_path, checkpoint_interval=3)
    trainer.train(steps=3)
    trainer.model.params["wte"][0, 0] = np.nan

    def disk_full(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(TrainingDiverged) as err:
        trainer.train()
    msg = str(err.value)
    assert msg.startswith("step 3: loss is nan") and "could not be written" in msg and "No space left" in msg
    assert "step_000003" in msg and "\n" not in msg
    assert list((tmp_path / "diverged").iterdir()) == []  # no half-written dump, no temp file


def test_ctrl_c_saves_the_current_step_and_resumes_bit_for_bit(corpus, tmp_path):
    import os
    import signal

    from cllm.train import TrainingInterrupted

    straight = _tiny_trainer(corpus, tmp_path / "a", steps=6, checkpoint_interval=100)
    straight.train()

    trainer = _tiny_trainer(corpus, tmp_path / "b", steps=6, checkpoint_interval=100)

    def ctrl_c(tr, event, info):
        if event == "step" and info["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    trainer.callbacks.append(ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="interrupted at step 3; saved") as err:
        trainer.train()
    assert isinstance(err.value, KeyboardInterrupt) and err.value.step == 3
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    assert err.value.saved == tmp_path / "b" / "checkpoints" / "step_000003"
    assert cllm.checkpoint.load_checkpoint(tmp_path / "b").step == 3  # before any interval checkpoint
    resumed = Trainer.resume(tmp_path / "b", corpus[1], corpus[2], progress=False)
    resumed.train()
    assert resumed.history.train_loss == straight.history.train_loss
    assert all(np.array_equal(resumed.model.params[k], straight.model.params[k]) for k in straight.model.params)


def test_resume_refuses_a_malformed_trainer_state(corpus, tmp_path):
    import hashlib
    import json

    trainer = _tiny_trainer(corpus, tmp_path, steps=2)
    trainer.train()
    path = cllm.checkpoint.resolve_checkpoint_dir(tmp_path)
    good = json.loads((path / "trainer.json").read_text())
    st = good["state"]
    cases = [{}, {**st, "history": [1, 2]}, {**st, "history": {"step": "12"}}, {**st, "history": {"bogus": []}},
             {**st, "batch_rng": {**st["batch_rng"], "bit_generator": "seed"}}, {**st, "dropout_rng": [1]},
             {**st, "batch_rng": {**st["batch_rng"], "state": {"state": "x"}}}]
    for state in cases:
        data = json.dumps({"step": 2, "state": state}).encode()
        (path / "trainer.json").write_bytes(data)
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["files"]["trainer.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(cllm.checkpoint.CheckpointError) as err:
            Trainer.resume(tmp_path, corpus[1], corpus[2], progress=False)
        assert "trainer.json" in str(err.value) and "\n" not in str(err.value), state
