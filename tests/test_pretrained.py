"""The shipped model loads, reproduces the validation loss it records, and writes text; the weights
format it uses round-trips and refuses damaged or mismatched files in one line."""
import json
import shutil

import numpy as np
import pytest

from cllm import pretrained
from cllm.checkpoint import CheckpointError, load_weights, save_weights
from cllm.config import ModelConfig
from cllm.data import CORPUS_SHA256
from cllm.model import Model


@pytest.fixture(scope="module")
def shipped():
    return pretrained.load()


def test_shipped_model_reproduces_its_recorded_validation_loss(shipped):
    rec = shipped.record
    assert rec["command"] == "python -m cllm train" and rec["step"] == 2000
    assert rec["corpus_sha256"] == CORPUS_SHA256
    val = shipped.validation_loss()  # every window of the validation split, float32 arithmetic
    assert rec["val_windows"] == len(shipped.validation_ids()) // 64 == 726
    assert val == pytest.approx(rec["val_loss"], abs=1e-4)
    # rounding the weights to float16 costs less than 1e-3 nats against the trainer's float32 figure
    assert abs(rec["val_loss"] - rec["train_val_loss"]) < 1e-3
    assert val < 1.45  # a trained model: the untrained one is at ln 103 = 4.63


def test_shipped_model_is_small_and_float16():
    size = sum(p.stat().st_size for p in pretrained.MAIN_JOB.iterdir())
    assert size < 1.8e6
    assert json.loads((pretrained.MAIN_JOB / "manifest.json").read_text())["dtype"] == "float16"


def test_shipped_model_writes_text_from_its_vocabulary(shipped):
    text = shipped.generate("def ", 80, temperature=0.8, seed=0)
    assert text.startswith("def ") and len(text) == 84
    assert text == shipped.generate("def ", 80, temperature=0.8, seed=0)  # seeded
    # a trained model puts spaces between word-like runs, as the corpus does
    words = text[4:].split()
    assert 5 <= len(words) <= 40


def _model(dtype="float32"):
    cfg = ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_seq_len=8, dtype=dtype)
    return Model(cfg, seed=3)


@pytest.mark.parametrize("dtype, tol", [("float16", 1e-3), ("float32", 0.0), ("float64", 0.0)])
def test_weights_round_trip(tmp_path, dtype, tol):
    m = _model()
    out = save_weights(tmp_path / "w", m.params, m.cfg.to_dict(), record={"note": "x"}, dtype=dtype)
    w = load_weights(out)
    assert w.stored_dtype == dtype and w.record == {"note": "x"} and w.tokenizer is None
    for k, v in m.params.items():
        assert w.params[k].dtype == np.float32
        np.testing.assert_allclose(w.params[k], v, rtol=tol, atol=tol * 1e-2)
    assert not [p for p in tmp_path.iterdir() if p.name != "w"]  # no temporary folder left


def test_weights_refuse_an_existing_folder_and_overflow(tmp_path):
    m = _model()
    (tmp_path / "w").mkdir()
    with pytest.raises(FileExistsError):
        save_weights(tmp_path / "w", m.params, m.cfg.to_dict())
    m.params["wte"][0, 0] = 1e6  # beyond float16's 65504
    with pytest.raises(ValueError, match="'wte' does not fit in float16"):
        save_weights(tmp_path / "v", m.params, m.cfg.to_dict())
    assert not (tmp_path / "v").exists() and [p.name for p in tmp_path.iterdir()] == ["w"]


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "params.npz").write_bytes((d / "params.npz").read_bytes()[:-10]), "params.npz: truncated"),
    (lambda d: (d / "record.json").write_text('{"a": 2}\n'), "record.json:"),
    (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json: missing"),
    (lambda d: (d / "manifest.json").write_text("[]"), "not a cllm-weights manifest"),
])
def test_damaged_shipped_copy_is_refused_in_one_line(tmp_path, damage, words):
    copy = tmp_path / "main_job"
    shutil.copytree(pretrained.MAIN_JOB, copy)
    damage(copy)
    with pytest.raises(CheckpointError) as exc:
        pretrained.load(copy)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_a_checkpoint_folder_is_not_weights(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder of weights"):
        load_weights(tmp_path / "nothing")
