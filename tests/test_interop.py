"""Hugging Face GPT-2 export and import (cllm/interop.py): the same logits, ids and greedy tokens in
transformers; GPT-2 files in both naming forms; export(import(x)) bit for bit; every bad input as one
line with exit status 2 and nothing written; training continued under torchrun."""
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cllm
from cllm import interop
from cllm.activations import import_bytes
from cllm.__main__ import main
from cllm.config import ModelConfig, TrainConfig
from cllm.model import Model
from cllm.tokenizer import BPETokenizer, CharTokenizer, WordTokenizer
from cllm.train import Trainer
from conftest import assert_user_error, run_cli

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("The quick brown fox jumps over the lazy dog, 42 times! Über-naïve café_au_lait\tends.\n" * 30)

needs_safetensors = pytest.mark.skipif(
    __import__("importlib").util.find_spec("safetensors") is None,
    reason="export writes model.safetensors with the optional safetensors package (pip install safetensors)")


def hf_modules():
    """torch and transformers, or skip the test saying why."""
    torch = pytest.importorskip("torch", reason="parity with transformers needs torch (optional extra)")
    transformers = pytest.importorskip("transformers", reason="parity needs transformers (optional extra)")
    pytest.importorskip("safetensors", reason="parity needs safetensors (optional extra)")
    return torch, transformers


def train_tiny(run_dir, kind="char", dtype="float64", tie=True, activation="gelu", steps=200, **model_kw):
    tok = CharTokenizer.fit(TEXT) if kind == "char" else WordTokenizer.fit(TEXT)
    ids = tok.encode(TEXT)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=2, n_heads=2, d_ff=40, max_seq_len=64,
                      dtype=dtype, tie_weights=tie, activation=activation, **model_kw)
    tc = TrainConfig(batch_size=8, seq_len=32, steps=steps, lr=1e-2, warmup_steps=2, lr_decay_steps=steps,
                     eval_interval=1000, checkpoint_interval=1000, workers=1)
    n = len(ids) * 9 // 10
    trainer = Trainer(Model(cfg, seed=3), ids[:n], ids[n:], tc, tokenizer=tok, run_dir=run_dir, progress=False)
    trainer.train()
    return trainer.model, tok


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Trained tiny runs: char (tied, gelu) and word (untied, tanh), float64."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, kw in {"char": dict(kind="char"), "word": dict(kind="word", tie=False, activation="tanh")}.items():
        model, tok = train_tiny(root / name, **kw)
        out[name] = (root / name, model, tok)
    return out


def as_dtype(model, dtype):
    import dataclasses

    m = Model(dataclasses.replace(model.cfg, dtype=dtype), seed=0)
    m.load_params({k: v.astype(dtype) for k, v in model.params.items()})
    return m


def st_read(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


# --------------------------------------------------------------------------------------------- formats
@needs_safetensors
def test_export_files_config_and_names(runs, tmp_path, capsys):
    run_dir, model, tok = runs["char"]
    out = tmp_path / "hf"
    code, stdout, err = run_cli(capsys, ["export", str(run_dir), "--format", "hf", "--out", str(out)])
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                    "tokenizer_config.json"]
    cfg = json.loads((out / "config.json").read_text())
    c = model.cfg
    assert (cfg["model_type"], cfg["architectures"]) == ("gpt2", ["GPT2LMHeadModel"])
    assert (cfg["n_embd"], cfg["n_layer"], cfg["n_head"], cfg["n_positions"], cfg["n_inner"], cfg["vocab_size"]) \
        == (c.d_model, c.n_layers, c.n_heads, c.max_seq_len, c.d_ff, c.vocab_size)
    assert cfg["activation_function"] == "gelu_new" and cfg["tie_word_embeddings"] is True
    assert cfg["layer_norm_epsilon"] == 1e-5 and cfg["bos_token_id"] is None and cfg["eos_token_id"] is None
    assert cfg["resid_pdrop"] == cfg["embd_pdrop"] == cfg["attn_pdrop"] == 0.0
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
    assert "lm_head.weight" not in keys  # tied: absent, as save_pretrained writes it
    assert keys == {interop.hf_name(k) for k in model.params}
    tensors = st_read(out / "model.safetensors")
    assert all(np.array_equal(tensors[interop.hf_name(k)], v) for k, v in model.params.items())
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (c.d_model, 3 * c.d_model)  # Conv1D (in, out)


@needs_safetensors
def test_untied_word_export_has_lm_head(runs, tmp_path):
    _, model, tok = runs["word"]
    interop.export_hf(model, tok, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["activation_function"] == "tanh"
    tensors = st_read(tmp_path / "hf" / "model.safetensors")
    assert np.array_equal(tensors["lm_head.weight"], model.params["lm_head.weight"])


def test_word_split_pattern_cuts_like_cllm():
    tokenizers = pytest.importorskip("tokenizers", reason="needs the tokenizers package (optional extra)")
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(interop.word_split_pattern()), behavior="isolated")
    rng = np.random.default_rng(0)
    cps = np.array([c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF])
    # where Python's re and Oniguruma classify \w \d \s differently: marks, other numbers, U+001C-1F, ...
    tricky = [0x1C, 0x1D, 0x1E, 0x1F, 0x85, 0xA0, 0x300, 0x301, 0x0E31, 0xB2, 0xBD, 0x2160, 0x5F, 0x203F, 0x378]
    pool = np.concatenate([rng.choice(cps, 20000), tricky, np.arange(32, 127)])
    text = "".join(map(chr, rng.choice(pool, 30000)))
    assert [t for t, _ in split.pre_tokenize_str(text)] == WordTokenizer.split(text)


def test_tokenizer_json_round_trip():
    for tok in (CharTokenizer.fit(TEXT), WordTokenizer.fit(TEXT)):
        files = interop.tokenizer_files(tok)
        d = Path(__import__("tempfile").mkdtemp())
        (d / "tokenizer.json").write_bytes(files["tokenizer.json"])
        assert interop.tokenizer_from_hf_json(d / "tokenizer.json") == tok
        shutil.rmtree(d)


# --------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", ["char", "word"])
def test_transformers_reproduces_exported_logits(runs, tmp_path, name):
    torch, transformers = hf_modules()
    _, model64, tok = runs[name]
    idx = np.random.default_rng(1).integers(0, model64.cfg.vocab_size, (3, 64))
    for dtype, tol in (("float32", 1e-5), ("float64", 1e-10)):
        model = as_dtype(model64, dtype)
        interop.export_hf(model, tok, tmp_path / dtype)
        hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / dtype), attn_implementation="eager",
                                                         dtype=getattr(torch, dtype)).eval()
        with torch.no_grad():
            theirs = hf(torch.from_numpy(idx)).logits.numpy()
        ours = model.forward(idx, train=False)[0]
        assert theirs.dtype == np.dtype(dtype)
        rel = np.abs(theirs - ours).max() / np.abs(ours).max()
        assert rel < tol, (dtype, rel)


def test_greedy_tokens_equal_hf_generate(runs, tmp_path):
    torch, transformers = hf_modules()
    from cllm.generate import generate

    _, model, tok = runs["char"]
    interop.export_hf(model, tok, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf"), attn_implementation="eager",
                                                     dtype=torch.float64).eval()
    prompt = tok.encode("The quick ")
    ours = generate(model, prompt, 50, temperature=0.0)[0]
    x = torch.from_numpy(prompt[None])
    theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=50, min_new_tokens=50,
                         do_sample=False, pad_token_id=0)[0].numpy()
    assert len(ours) == len(prompt) + 50 and np.array_equal(ours, theirs)
    assert len(set(ours[len(prompt):].tolist())) > 1  # a non-trivial continuation


@pytest.mark.parametrize("name", ["char", "word"])
def test_autotokenizer_gives_cllm_ids(runs, tmp_path, name):
    hf_modules()
    from transformers import AutoTokenizer

    _, model, tok = runs[name]
    interop.export_hf(model, tok, tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    texts = [TEXT[:500], "dog, 42 times!\n\n  The  café", "\tends.\n"]
    if name == "word":  # unknown words -> <unk> (id 0), and a literal "<unk>" is split as cllm splits it
        texts += ["zebra <unk> Über 1234 ü\u0301 x\u00b2 a\x1cb"]
    for text in texts:
        ids = hf_tok(text)["input_ids"]
        assert ids == tok.encode(text).tolist(), text
        if name == "char":
            assert hf_tok.decode(ids) == text


def _random_hf_model(torch, transformers, n_layer, n_head, n_embd, tie, act, vocab, seed):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=16, vocab_size=vocab,
                                  activation_function=act, tie_word_embeddings=tie, bos_token_id=None,
                                  eos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(cfg).to(torch.float64).eval()
    with torch.no_grad():  # off the init: biases, gains, every weight different from its default
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return hf


@pytest.mark.parametrize("n_layer,n_head,n_embd,tie,act", [
    (1, 1, 8, True, "gelu_new"), (2, 2, 16, False, "tanh"), (3, 4, 24, True, "tanh"), (2, 3, 12, False, "gelu_new"),
])
def test_gpt2_files_in_both_naming_forms_load_with_the_same_logits(tmp_path, n_layer, n_head, n_embd, tie, act):
    torch, transformers = hf_modules()
    from safetensors.numpy import save_file

    chars = sorted(set(TEXT))
    hf = _random_hf_model(torch, transformers, n_layer, n_head, n_embd, tie, act, len(chars), seed=n_layer)
    tok_files = interop.tokenizer_files(CharTokenizer(chars))
    pre, bare = tmp_path / "save_pretrained", tmp_path / "hub"
    hf.save_pretrained(str(pre))
    for d in (pre, bare):
        d.mkdir(exist_ok=True)
        for n, data in tok_files.items():
            (d / n).write_bytes(data)
    shutil.copy(pre / "config.json", bare / "config.json")
    # the Hub's original form: no "transformer." prefix, causal-mask buffers, no lm_head for a tied model
    sd = {k.removeprefix("transformer."): v.numpy() for k, v in hf.state_dict().items()}
    if tie:
        sd.pop("lm_head.weight")
    T = hf.config.n_positions
    for l in range(n_layer):
        sd[f"h.{l}.attn.bias"] = np.tril(np.ones((T, T), np.float32))[None, None]
        sd[f"h.{l}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(sd, str(bare / "model.safetensors"), metadata={"format": "pt"})
    with open(pre / "model.safetensors", "rb") as f:
        assert "transformer.h.0.attn.c_attn.weight" in f.read(20000).decode("latin-1")

    idx = np.random.default_rng(0).integers(0, len(chars), (2, 16))
    with torch.no_grad():
        ref = hf(torch.from_numpy(idx)).logits.numpy()
    for d in (pre, bare):
        model, tok = cllm.load_pretrained(d)
        assert model.dtype == np.float64 and model.cfg.tie_weights is tie and model.cfg.d_ff == 4 * n_embd
        assert model.cfg.activation == {"gelu_new": "gelu", "tanh": "tanh"}[act]
        ours = model.forward(idx, train=False)[0]
        assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-10, d.name
        # export(import(x)): the same tensors, bit for bit, in save_pretrained's naming
        interop.export_hf(model, tok, tmp_path / f"again-{d.name}")
        again = st_read(tmp_path / f"again-{d.name}" / "model.safetensors")
        original = st_read(pre / "model.safetensors")
        assert again.keys() == original.keys()
        assert all(again[k].dtype == original[k].dtype and again[k].tobytes() == original[k].tobytes()
                   for k in original)


# --------------------------------------------------------------------------------------------- numpy only
@needs_safetensors
def test_export_import_export_is_bitwise_and_float32_stays_float32(runs, tmp_path):
    _, model64, tok = runs["word"]
    for dtype in ("float32", "float64"):
        model = as_dtype(model64, dtype)
        a, b = tmp_path / f"a-{dtype}", tmp_path / f"b-{dtype}"
        interop.export_hf(model, tok, a)
        back, tok2 = cllm.load_pretrained(a)
        assert back.dtype == np.dtype(dtype) and back.cfg == model.cfg and tok2.vocab == tok.vocab
        interop.export_hf(back, tok2, b)
        ta, tb = st_read(a / "model.safetensors"), st_read(b / "model.safetensors")
        assert ta.keys() == tb.keys() and all(ta[k].tobytes() == tb[k].tobytes() for k in ta)
        assert [(a / n).read_bytes() for n in ("config.json", "tokenizer.json")] == \
            [(b / n).read_bytes() for n in ("config.json", "tokenizer.json")]
    as64, _ = cllm.load_pretrained(tmp_path / "a-float32", dtype="float64")
    assert as64.dtype == np.float64


@needs_safetensors
def test_import_makes_a_run_that_trains_generates_and_steps_through(runs, tmp_path, capsys):
    run_dir, model, tok = runs["char"]
    hf_dir, run = tmp_path / "hf", tmp_path / "imported"
    assert run_cli(capsys, ["export", str(run_dir), "--format", "hf", "--out", str(hf_dir)])[0] == 0
    code, out, err = run_cli(capsys, ["import", str(hf_dir), "--out", str(run)])
    assert code == 0, err
    from cllm.checkpoint import load_checkpoint

    ck = load_checkpoint(run)
    assert ck.step == 0 and all(np.array_equal(ck.params[k], v) for k, v in model.params.items())
    assert all(not v.any() for k, v in ck.opt_state.items() if k != "step")  # a fresh optimizer
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    code, out, err = run_cli(capsys, ["generate", "--checkpoint", str(run), "--prompt", "The ", "--tokens", "10",
                                      "--greedy"])
    assert code == 0 and out.startswith("The "), err
    from cllm.generate import generate

    assert out.rstrip("\n") == tok.decode(generate(model, tok.encode("The "), 10, temperature=0.0)[0])
    code, out, err = run_cli(capsys, ["train", "--resume", str(run), "--data", str(text), "--steps", "3",
                                      "--no-progress", "--sample-tokens", "0"])
    assert code == 0 and "at step 3" in out, err
    from cllm.course.stepthrough import StepThrough

    m, _ = cllm.load_pretrained(hf_dir)
    x = tok.encode(TEXT[:17])
    st = StepThrough.from_model(m, x[None, :-1], x[None, 1:])
    assert st.names("forward")[0] == "h.0.ln_1.in" and np.isclose(st.loss, m.loss(x[None, :-1], x[None, 1:]))


@needs_safetensors
def test_lattice_embedding_is_exported_as_its_matrix(tmp_path):
    model, tok = train_tiny(None, steps=3, embedding="lattice")
    interop.export_hf(model, tok, tmp_path / "hf")
    tensors = st_read(tmp_path / "hf" / "model.safetensors")
    E = model.embedding_matrix()
    assert np.array_equal(tensors["transformer.wte.weight"], E) and not np.array_equal(E, model.params["wte"])
    assert not any("lattice" in k for k in tensors)
    back, _ = cllm.load_pretrained(tmp_path / "hf")
    idx = tok.encode(TEXT[:40])[None]
    assert back.cfg.embedding == "learned"
    np.testing.assert_allclose(back.forward(idx, train=False)[0], model.forward(idx, train=False)[0],
                               rtol=0, atol=1e-12)


@needs_safetensors
def test_lattice_attention_bias_is_refused(tmp_path, capsys):
    train_tiny(tmp_path / "run", steps=2, attention_bias="lattice")
    out = tmp_path / "hf"
    line = assert_user_error(capsys, ["export", str(tmp_path / "run"), "--format", "hf", "--out", str(out)],
                             "lattice attention bias")
    assert "cannot be expressed as GPT-2" in line and not out.exists()


# --------------------------------------------------------------------------------------------- bad input
@pytest.fixture()
def hf_dir(runs, tmp_path):
    _, model, tok = runs["char"]
    d = tmp_path / "hf"
    pytest.importorskip("safetensors", reason="writing model.safetensors needs safetensors")
    interop.export_hf(as_dtype(model, "float32"), tok, d)
    return d


def test_export_into_a_non_empty_directory_needs_force(runs, tmp_path, capsys):
    pytest.importorskip("safetensors", reason="writing model.safetensors needs safetensors")
    run_dir = runs["char"][0]
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(capsys, ["export", str(run_dir), "--format", "hf", "--out", str(out)], "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert run_cli(capsys, ["export", str(run_dir), "--format", "hf", "--out", str(out), "--force"])[0] == 0
    assert (out / "model.safetensors").exists() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary folder left beside it


def test_export_errors_write_nothing(tmp_path, capsys):
    assert_user_error(capsys, ["export", str(tmp_path / "nope"), "--format", "hf", "--out", str(tmp_path / "o")],
                      "no such run")
    assert_user_error(capsys, ["export", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "o")],
                      "invalid choice")
    assert not (tmp_path / "o").exists()


def _import_error(capsys, d, needle, tmp_path):
    out = tmp_path / "run-out"
    line = assert_user_error(capsys, ["import", str(d), "--out", str(out)], needle)
    assert not out.exists()
    return line


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_import_refuses_other_model_types_and_activations(hf_dir, tmp_path, capsys):
    _edit_config(hf_dir, model_type="llama")
    _import_error(capsys, hf_dir, "model_type 'llama' is not 'gpt2'", tmp_path)
    _edit_config(hf_dir, model_type="gpt2", activation_function="gelu")
    _import_error(capsys, hf_dir, "activation_function 'gelu' is not one cllm has", tmp_path)
    _edit_config(hf_dir, activation_function="relu")
    _import_error(capsys, hf_dir, "activation_function 'relu'", tmp_path)


def test_import_missing_files(hf_dir, tmp_path, capsys):
    _import_error(capsys, tmp_path / "absent", "no such directory", tmp_path)
    for name, needle in (("tokenizer.json", "missing tokenizer files"), ("model.safetensors", "missing model.safetensors"),
                         ("config.json", "missing config.json")):
        (hf_dir / name).unlink()
        _import_error(capsys, hf_dir, needle, tmp_path)


def test_import_refuses_pickles(hf_dir, tmp_path, capsys):
    (hf_dir / "model.safetensors").rename(hf_dir / "pytorch_model.bin")
    line = _import_error(capsys, hf_dir, "pytorch_model.bin", tmp_path)
    assert "convert it to safetensors" in line
    line = _import_error(capsys, hf_dir / "pytorch_model.bin", "never unpickles", tmp_path)


def test_import_shape_that_disagrees_with_the_config(hf_dir, tmp_path, capsys):
    cfg = json.loads((hf_dir / "config.json").read_text())
    _edit_config(hf_dir, n_inner=cfg["n_inner"] + 1)
    _import_error(capsys, hf_dir, "config.json implies", tmp_path)
    _edit_config(hf_dir, n_inner=cfg["n_inner"], n_layer=3)
    _import_error(capsys, hf_dir, "missing tensor 'transformer.h.2.", tmp_path)
    _edit_config(hf_dir, n_layer=1)
    _import_error(capsys, hf_dir, "unexpected tensor 'transformer.h.1.", tmp_path)
    _edit_config(hf_dir, n_layer=2, tie_word_embeddings=False)
    _import_error(capsys, hf_dir, "missing tensor 'lm_head.weight' (config.json says tie_word_embeddings false)",
                  tmp_path)


def _header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path, header, data, pad_to=None):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_import_refuses_a_header_that_lies(hf_dir, tmp_path, capsys):
    path = hf_dir / "model.safetensors"
    original = path.read_bytes()
    header, data = _header(path)
    name = "transformer.h.0.mlp.c_fc.weight"
    lies = []
    h = json.loads(json.dumps(header))
    h[name]["data_offsets"][1] += 4
    lies.append((h, data, "claims bytes"))                  # the range disagrees with dtype x shape
    h = json.loads(json.dumps(header))
    h[name]["shape"] = [h[name]["shape"][0], h[name]["shape"][1] * 1000]
    lies.append((h, data, "takes"))
    lies.append((header, data[:-100], "data section"))      # the file is shorter than the header says
    h = json.loads(json.dumps(header))
    h[name]["data_offsets"] = [0, h[name]["data_offsets"][1] - h[name]["data_offsets"][0]]
    lies.append((h, data, "overlap"))
    lies.append((header, data + b"\0" * 8, "tensors end at byte"))
    h = json.loads(json.dumps(header))
    h[name]["dtype"] = "Q7"
    lies.append((h, data, "unknown dtype"))
    for h, d, needle in lies:
        _write(path, h, d)
        _import_error(capsys, hf_dir, needle, tmp_path)
    path.write_bytes(struct.pack("<Q", 10**12) + original[8:])  # a length prefix beyond the file
    _import_error(capsys, hf_dir, "the header claims", tmp_path)
    path.write_bytes(original[:8 + 40])
    _import_error(capsys, hf_dir, "", tmp_path)
    path.write_bytes(original)
    assert cllm.load_pretrained(hf_dir)[0].cfg.n_layers == 2  # the untouched file still loads


def test_import_refuses_a_model_bigger_than_the_machine(hf_dir, tmp_path, capsys):
    _edit_config(hf_dir, n_embd=65536, n_head=64, n_layer=4096, n_inner=None)
    line = _import_error(capsys, hf_dir, "GiB of memory", tmp_path)
    assert "this machine has" in line
    cfg = interop.model_config_from_hf(json.loads((hf_dir / "config.json").read_text()), "c", "float32")
    assert import_bytes(cfg) > 4 * 2**40  # 65536^2 x 12 x 4096 x 4 bytes and more


def test_import_into_a_non_empty_run_directory(hf_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "x").write_text("mine")
    assert_user_error(capsys, ["import", str(hf_dir), "--out", str(out)], "not an empty directory")
    assert [p.name for p in out.iterdir()] == ["x"]


def test_a_foreign_tokenizer_json_is_refused(hf_dir, tmp_path, capsys):
    (hf_dir / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []}}))
    _import_error(capsys, hf_dir, "not a tokenizer.json that cllm wrote", tmp_path)


def test_safetensors_header_reader_accepts_what_safetensors_writes(tmp_path):
    from safetensors.numpy import save_file

    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros((0, 4)), "c": np.ones(3, np.float16)}
    save_file(arrays, str(tmp_path / "x.safetensors"), metadata={"format": "pt"})
    tensors, meta, start = interop.read_safetensors_header(tmp_path / "x.safetensors")
    assert meta == {"format": "pt"}
    assert {k: v[:2] for k, v in tensors.items()} == {"a": ("F32", (2, 3)), "b": ("F64", (0, 4)), "c": ("F16", (3,))}
    with open(tmp_path / "x.safetensors", "rb") as f:
        assert np.array_equal(interop._read_tensor(f, start, tensors["a"], np.float64), arrays["a"])


def test_bfloat16_tensors_are_read_as_float32(tmp_path):
    x = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)  # exact in bfloat16
    raw = (x.view(np.uint32) >> 16).astype("<u2").tobytes()
    _write(tmp_path / "b.safetensors", {"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, raw)
    tensors, _, start = interop.read_safetensors_header(tmp_path / "b.safetensors")
    with open(tmp_path / "b.safetensors", "rb") as f:
        assert np.array_equal(interop._read_tensor(f, start, tensors["w"], np.float32), x)


# --------------------------------------------------------------------------------------------- BPE
def test_bpe_export_gives_autotokenizer_ids(tmp_path):
    hf_modules()
    from transformers import AutoTokenizer

    tok = BPETokenizer.train(TEXT, vocab_size=300)
    model = Model(ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                              max_seq_len=32), seed=0)
    interop.export_hf(model, tok, tmp_path / "hf")
    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert "vocab.json" in files and "merges.txt" in files
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf_tok(TEXT[:300])["input_ids"] == tok.encode(TEXT[:300]).tolist()
    back, tok2 = cllm.load_pretrained(tmp_path / "hf")
    assert tok2.encode(TEXT[:300]).tolist() == tok.encode(TEXT[:300]).tolist()
    eot = tok.encode("<|endoftext|>", allowed_special="all").tolist()
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert [cfg["bos_token_id"]] == eot and [cfg["eos_token_id"]] == eot


# --------------------------------------------------------------------------------------------- torchrun
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_continue_in_pytorch_under_torchrun(tmp_path):
    hf_modules()
    model, tok = train_tiny(None, dtype="float32", steps=10)  # early in training: the loss still has room
    interop.export_hf(model, tok, tmp_path / "hf")
    data = tmp_path / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    log = tmp_path / "log.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
           str(ROOT / "examples" / "continue_in_pytorch.py"), str(tmp_path / "hf"), "--data", str(data),
           "--steps", "8", "--batch-size", "2", "--seq-len", "32", "--lr", "1e-2", "--log-json", str(log),
           "--out", str(tmp_path / "trained")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rec = json.loads(log.read_text())
    assert rec["world_size"] == 2 and len(rec["losses"]) == 8
    x = np.array(rec["first_batch"]["x"])
    y = np.array(rec["first_batch"]["y"])
    assert x.shape == (4, 32)  # 2 ranks x batch 2
    ours = model.loss(x, y)
    assert abs(rec["losses"][0] - ours) <= 1e-5 * abs(ours), (rec["losses"][0], ours)
    assert rec["losses"][-1] < rec["losses"][0]
    assert (tmp_path / "trained" / "model.safetensors").exists()
    back, _ = cllm.load_pretrained(tmp_path / "trained")  # and back into cllm
    assert back.loss(x, y) < ours


# --------------------------------------------------------------------------------------------- GPT-2 124M
HUB_GPT2_CONFIG = {  # openai-community/gpt2's config.json (no n_inner, no tie_word_embeddings: the defaults)
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12,
    "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}, "vocab_size": 50257}


def test_the_hub_gpt2_config_is_the_bench_model():
    from cllm.lab.bench_gpt2 import GPT2_124M
    from cllm.model import param_shapes

    cfg = interop.model_config_from_hf(HUB_GPT2_CONFIG, "config.json", "float32")
    assert cfg == GPT2_124M and cfg.d_ff == 3072 and cfg.tie_weights
    assert sum(np.prod(s) for s in param_shapes(cfg).values()) == 124_439_808  # GPT-2 small, tied head
    assert import_bytes(cfg, optimizer_moments=2) < 2.5 * 2**30


def test_export_without_safetensors_says_how_to_install_it(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)  # import fails as if it were not installed
    monkeypatch.setitem(sys.modules, "safetensors", None)
    out = tmp_path / "hf"
    assert_user_error(capsys, ["export", str(runs["char"][0]), "--format", "hf", "--out", str(out)],
                      "pip install safetensors")
    assert not out.exists() and list(tmp_path.iterdir()) == []
