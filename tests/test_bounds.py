"""Bounded inputs: memory estimates checked before allocating, one-line refusals, sampling that stays
finite at any temperature, and finite-number / integer validation shared by every configuration."""
import hashlib
import json
import math
import os
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest

import cllm
from cllm import activations
from cllm.__main__ import main
from cllm.checkpoint import load_checkpoint, save_checkpoint
from cllm.config import ModelConfig, TrainConfig
from cllm.generate import generate, sample_next
from cllm.model import Model, param_shapes
from conftest import TINY_ARGS, run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_ARGS + ["--sample-tokens", "0"]
GiB = 1 << 30
run = run_cli


def one_line_error(code, out, err, needle):
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("cllm: error:"), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in out + err


def run_cli_limited(args, timeout=120, address_space=6 * GiB):
    """``python -m cllm ARGS`` in a child process whose address space is capped, so that a version
    that allocates without looking first fails fast (MemoryError) instead of filling the machine, and
    one that blocks is stopped by the timeout."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS="1")
    try:
        p = subprocess.run([sys.executable, "-m", "cllm"] + args, capture_output=True, text=True,
                           timeout=timeout, preexec_fn=limit, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"cllm {' '.join(args)} did not finish within {timeout} s")
    return p.returncode, p.stdout, p.stderr


# ---------------------------------------------------------------------------------------------------
# 1. memory: closed-form estimates, checked before anything is allocated

@pytest.mark.parametrize("overrides", [
    {}, dict(tie_weights=False), dict(embedding="lattice"), dict(attention_bias="lattice"),
    dict(n_layers=3, d_ff=48, max_seq_len=33, vocab_size=29),
])
def test_param_count_is_the_sum_over_the_shapes(overrides):
    cfg = ModelConfig(**{**dict(vocab_size=17, d_model=24, n_layers=2, n_heads=4, d_ff=40, max_seq_len=12),
                         **overrides})
    assert activations.param_count(cfg) == sum(math.prod(s) for s in param_shapes(cfg).values())
    assert activations.param_count(cfg) == Model(cfg).num_params()


def test_param_count_needs_no_shape_dict():
    cfg = ModelConfig(n_layers=10**8)  # param_shapes would hold 1.2e9 entries
    assert activations.param_count(cfg) == 10**8 * (4 * 128**2 + 2 * 128 * 512 + 9 * 128 + 512) + 65 * 128 + 64 * 128 + 256


@pytest.mark.parametrize("C, L, F, B, T, optimizer", [(64, 2, 256, 8, 32, "adamw"), (32, 1, 64, 4, 64, "sgd")])
def test_training_estimate_matches_the_measured_peak(C, L, F, B, T, optimizer):
    from cllm.data import builtin_corpus, split
    from cllm.parallel import auto_workers
    from cllm.tokenizer import CharTokenizer
    from cllm.train import Trainer

    text = builtin_corpus()[:30_000]
    tok = CharTokenizer.fit(text)
    train, val = split(tok.encode(text), 0.1)
    mc = ModelConfig(vocab_size=tok.vocab_size, d_model=C, n_layers=L, n_heads=4, d_ff=F, max_seq_len=T)
    tc = TrainConfig(batch_size=B, seq_len=T, steps=2, eval_interval=1, log_interval=1, optimizer=optimizer)
    tracemalloc.start()
    try:
        trainer = Trainer(Model(mc, seed=0), train, val, tc, progress=False)
        trainer.train()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    est = activations.training_bytes(mc, B, T, optimizer=optimizer, workers=trainer.parallel.workers,
                                     eval_batch_size=min(4 * B, (len(val) - 1) // T))
    assert 0.8 * peak < est < 1.25 * peak, (est, peak)


def test_check_memory_message():
    with pytest.raises(activations.NotEnoughMemory,
                       match=r"^training needs about 71\.3 GiB; 22\.1 GiB available$"):
        activations.check_memory(71.3 * GiB, "training", available=22.1 * GiB)
    activations.check_memory(GiB, "training", available=2 * GiB)  # fits: nothing raised
    assert [activations.format_bytes(n) for n in (512, 4096, 3 << 20, 1.5 * (1 << 40), 1e30)] == [
        "512 bytes", "4.0 KiB", "3.0 MiB", "1.5 TiB", "9.31e+20 GiB"]
    assert issubclass(activations.NotEnoughMemory, MemoryError) and issubclass(activations.NotEnoughMemory, ValueError)


def test_available_memory_is_read():
    avail = activations.available_memory()
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert avail is not None and 0 < avail <= total


def test_model_refuses_a_config_beyond_memory():
    with pytest.raises(activations.NotEnoughMemory, match="parameters needs about .* available"):
        Model(ModelConfig(n_layers=10_000_000))


@pytest.mark.parametrize("flag, value", [("--seq-len", "40000"), ("--batch-size", "1000000000"),
                                         ("--d-model", "65536"), ("--d-ff", "1000000000"),
                                         ("--n-layers", "10000000")])
def test_train_beyond_memory_is_one_line(tmp_path, flag, value):
    out = tmp_path / "run"
    code, stdout, err = run_cli_limited(["train", flag, value, "--steps", "1", "--out", str(out), "--no-progress",
                                         "--sample-tokens", "0"])
    one_line_error(code, stdout, err, "needs about")
    assert "available" in err and not out.exists()


def test_train_refuses_in_one_line_when_memory_is_short(capsys, tmp_path, text_file, monkeypatch):
    monkeypatch.setattr(activations, "available_memory", lambda: 4096)  # 4 KiB free
    out = tmp_path / "run"
    code, stdout, err = run(capsys, ["train", "--data", str(text_file), "--steps", "3", "--out", str(out)] + TINY)
    one_line_error(code, stdout, err, "; 4.0 KiB available")
    assert "needs about" in err and not out.exists()


def test_resume_and_generate_check_memory(capsys, tmp_path, text_file, monkeypatch):
    out = tmp_path / "run"
    code, _, err = run(capsys, ["train", "--data", str(text_file), "--steps", "3", "--out", str(out)] + TINY)
    assert code == 0, err
    latest = (out / "latest").read_text()
    monkeypatch.setattr(activations, "available_memory", lambda: 4096)
    code, stdout, err = run(capsys, ["train", "--data", str(text_file), "--steps", "6", "--resume", str(out),
                                     "--no-progress", "--sample-tokens", "0"])
    one_line_error(code, stdout, err, "needs about")
    code, stdout, err = run(capsys, ["generate", "--checkpoint", str(out), "--prompt", "the", "--tokens", "5"])
    one_line_error(code, stdout, err, "needs about")
    monkeypatch.undo()
    monkeypatch.setattr(activations, "generation_bytes", lambda *a, **k: 1 << 60)  # loading fits, generating not
    code, stdout, err = run(capsys, ["generate", "--checkpoint", str(out), "--prompt", "the", "--tokens", "5"])
    one_line_error(code, stdout, err, "generating with 2,960 parameters needs about 1024.0 PiB")
    monkeypatch.undo()
    assert (out / "latest").read_text() == latest and load_checkpoint(out).step == 3  # nothing changed


def _forge_config(ckpt: Path, **model_changes):
    """Edit config.json and re-sign it in the manifest (what someone able to edit the files can do)."""
    config = json.loads((ckpt / "config.json").read_text())
    config["model"].update(model_changes)
    data = (json.dumps(config) + "\n").encode()
    (ckpt / "config.json").write_bytes(data)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"]["config.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def test_checkpoint_with_a_huge_config_is_refused_before_any_shape_is_built(tmp_path):
    cfg = ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_seq_len=8)
    model = Model(cfg)
    ckpt = save_checkpoint(tmp_path / "run", 1, model.params, {}, cfg.to_dict(),
                           tokenizer_dict={"type": "char", "vocab": list("abcdefghijk")})
    _forge_config(ckpt, n_layers=10**8)
    code, stdout, err = run_cli_limited(["generate", "--checkpoint", str(tmp_path / "run"), "--prompt", "ab"],
                                        timeout=60, address_space=3 * GiB)
    one_line_error(code, stdout, err, "config.json: loading a model of 60,000,000,168 parameters")
    assert "needs about" in err


def test_a_remaining_memory_error_is_one_line(capsys, tmp_path, text_file, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.2 TiB for an array with shape (12, 4, 40000, 40000)")

    monkeypatch.setattr(cllm.train.Trainer, "train", no_memory)
    code, stdout, err = run(capsys, ["train", "--data", str(text_file), "--steps", "3",
                                     "--out", str(tmp_path / "run")] + TINY)
    one_line_error(code, stdout, err, "out of memory: Unable to allocate 1.2 TiB")


# ---------------------------------------------------------------------------------------------------
# 1. data: regular files and folders only, and no more text than memory can hold

def test_dev_zero_is_refused_at_once(tmp_path):
    code, stdout, err = run_cli_limited(["train", "--data", "/dev/zero", "--out", str(tmp_path / "r")],
                                        timeout=60, address_space=3 * GiB)
    one_line_error(code, stdout, err, "/dev/zero: not a regular file or folder")


def test_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code, stdout, err = run_cli_limited(["train", "--data", str(fifo), "--out", str(tmp_path / "r")], timeout=60)
    one_line_error(code, stdout, err, "not a regular file or folder")
    assert not (tmp_path / "r").exists()


def test_text_larger_than_memory_is_refused(text_file, monkeypatch):
    from cllm.data import TEXT_BYTES_PER_BYTE, load_text

    size = text_file.stat().st_size
    monkeypatch.setattr(activations, "available_memory", lambda: size * TEXT_BYTES_PER_BYTE - 1)
    with pytest.raises(activations.NotEnoughMemory, match=f"{size:,} bytes of text to read and tokenise needs about"):
        load_text(text_file)
    with pytest.raises(activations.NotEnoughMemory):
        load_text(text_file.parent)  # a folder: the sum of its .txt files
    monkeypatch.setattr(activations, "available_memory", lambda: size * TEXT_BYTES_PER_BYTE)
    assert load_text(text_file).startswith("the quick")


# ---------------------------------------------------------------------------------------------------
# 2. sampling: any finite temperature, a bounded number of tokens

def test_tiny_temperature_is_greedy_without_nan():
    logits = np.random.default_rng(0).normal(0.0, 3.0, (64, 97))  # (B, V), no ties
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning either
        for t in (1e-310, 5e-324, 1e-30, 1e-8):
            for kw in ({}, {"top_k": 5}, {"top_p": 0.5}):
                ids = sample_next(logits, t, rng=np.random.default_rng(1), **kw)
                assert np.array_equal(ids, logits.argmax(axis=-1)), (t, kw)


def test_generate_at_tiny_temperature_equals_greedy():
    cfg = ModelConfig(vocab_size=13, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16)
    model = Model(cfg, seed=3)
    a = generate(model, [1, 2, 3], 20, temperature=1e-310, seed=0)
    assert np.array_equal(a, generate(model, [1, 2, 3], 20, temperature=0.0))


def test_cli_tiny_temperature_matches_greedy(capsys, tmp_path):
    text = tmp_path / "nospace.txt"  # the lowest id ('.') is rare, so a NaN draw (id 0) is not the greedy token
    text.write_text("thequickbrownfoxjumpsoverthelazydog." * 50, encoding="utf-8")
    out = tmp_path / "run"
    assert run(capsys, ["train", "--data", str(text), "--steps", "20", "--out", str(out)] + TINY)[0] == 0
    g = ["generate", "--checkpoint", str(out), "--prompt", "the", "--tokens", "12"]
    code, greedy, _ = run(capsys, g + ["--greedy"])
    assert code == 0 and "." not in greedy
    code, tiny, err = run_cli_limited(g + ["--temperature", "1e-310"])  # warnings reach a real stderr
    assert code == 0 and tiny == greedy and len(tiny.rstrip("\n")) == 15 and "Warning" not in err, err


def test_tokens_are_bounded():
    from cllm.generate import MAX_NEW_TOKENS

    model = Model(ModelConfig(vocab_size=13, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16))
    with pytest.raises(ValueError, match="max_new_tokens must be at most 1,000,000"):
        generate(model, [1], MAX_NEW_TOKENS + 1)


def test_cli_tokens_bounded_before_loading(tmp_path):
    code, stdout, err = run_cli_limited(["generate", "--checkpoint", str(tmp_path / "none"), "--prompt", "a",
                                         "--tokens", "1000000000000"], timeout=60)
    one_line_error(code, stdout, err, "--tokens must be at most 1,000,000, got 1,000,000,000,000")


# ---------------------------------------------------------------------------------------------------
# 3. divergence: the one-line message, no numpy warnings

def test_divergence_prints_no_runtime_warnings(tmp_path, text_file):
    for workers in ("1", "2"):
        out = tmp_path / f"run{workers}"
        code, stdout, err = run_cli_limited(["train", "--data", str(text_file), "--lr", "1e39", "--warmup-steps", "0",
                                             "--steps", "3", "--workers", workers, "--out", str(out)] + TINY)
        assert "RuntimeWarning" not in err and "Warning" not in err, err
        assert code == 1 and err.strip().splitlines() == [l for l in err.strip().splitlines()
                                                         if l.startswith("cllm: training stopped:")], err


def test_trainer_divergence_warns_nothing_on_worker_threads(tmp_path):
    from cllm.data import builtin_corpus, split
    from cllm.tokenizer import CharTokenizer
    from cllm.train import Trainer, TrainingDiverged

    text = builtin_corpus()[:20_000]
    tok = CharTokenizer.fit(text)
    train, val = split(tok.encode(text), 0.1)
    mc = ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16)
    tc = TrainConfig(batch_size=8, seq_len=16, steps=4, lr=1e39, warmup_steps=0, workers=2)
    trainer = Trainer(Model(mc), train, val, tc, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TrainingDiverged):
            trainer.train()
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []


# ---------------------------------------------------------------------------------------------------
# 4. min_lr <= lr

def test_min_lr_above_lr_is_refused(capsys, tmp_path, text_file):
    with pytest.raises(ValueError, match=r"min_lr \(0.01\) must not exceed lr \(0.001\)"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    TrainConfig(lr=1e-3, min_lr=1e-3)  # equal: a constant rate after warmup
    code, stdout, err = run(capsys, ["train", "--data", str(text_file), "--lr", "0.001", "--min-lr", "0.01",
                                     "--out", str(tmp_path / "r")] + TINY)
    one_line_error(code, stdout, err, "min_lr (0.01) must not exceed lr (0.001)")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------------
# 5. the API refuses what it cannot mean

@pytest.fixture(scope="module")
def tiny_model():
    return Model(ModelConfig(vocab_size=13, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16), seed=0)


@pytest.mark.parametrize("prompt", [[1.7, 2.0], np.array([1.0, 2.0]), [[True, False]]])
def test_generate_refuses_non_integer_prompts(tiny_model, prompt):
    with pytest.raises(ValueError, match="integer token ids"):
        generate(tiny_model, prompt, 3)


@pytest.mark.parametrize("kw, needle", [
    (dict(temperature=float("nan")), "temperature must be a finite number"),
    (dict(temperature=float("inf")), "temperature must be a finite number"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(top_k=2.5), "top_k must be a positive integer"),
    (dict(top_k=True), "top_k must be a positive integer"),
    (dict(top_p=float("nan")), "top_p must be a finite number"),
    (dict(top_p=0.0), "top_p must be > 0"),
    (dict(top_p="0.5"), "top_p must be a finite number"),
])
def test_sampling_arguments_are_checked(tiny_model, kw, needle):
    with pytest.raises(ValueError, match=needle):
        generate(tiny_model, [1, 2], 3, **kw)
    with pytest.raises(ValueError, match=needle):
        sample_next(np.zeros((1, 13)), **{"temperature": 1.0, **kw})


def test_numpy_integers_still_work(tiny_model):
    out = generate(tiny_model, np.array([1, 2], dtype=np.int32), np.int64(3), top_k=np.int64(4), seed=0)
    assert out.shape == (1, 5)


def test_backward_needs_the_activation_store(tiny_model):
    with pytest.raises(ValueError, match="backward needs the ActivationStore that forward returned"):
        tiny_model.backward(None)


FLOAT_FIELDS = [(TrainConfig, n) for n in ("lr", "min_lr", "beta1", "beta2", "eps", "momentum", "weight_decay",
                                           "grad_clip")] + [(ModelConfig, n) for n in ("dropout", "lattice_reg")]


@pytest.mark.parametrize("cls, name", FLOAT_FIELDS)
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_every_float_field_must_be_finite(cls, name, bad):
    with pytest.raises(ValueError, match=f"^{name} must be a finite number"):
        cls(**{name: bad})


def test_one_shared_validator():
    from cllm import config, optim

    assert optim._check_number is config.check_number
    assert config.check_number("x", np.float32(0.5), 0.0) == 0.5
    assert config.check_int("n", np.int64(3), 1) == 3
    for bad in (True, 2.0, "3", None):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            config.check_int("n", bad, 1)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        optim.AdamW({"w": np.zeros(3)}, lr=float("inf"))
