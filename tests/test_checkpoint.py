"""Checkpoints: round trip, retention, atomicity under SIGKILL, and one-line errors for damaged files."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cllm.checkpoint import (Checkpoint, CheckpointError, expected_param_shapes, generator_from_state, list_checkpoints,
                             atomic_write_text, load_checkpoint, save_checkpoint)
from cllm.config import ModelConfig, TrainConfig
from cllm.optim import AdamW
from cllm.tokenizer import CharTokenizer, tokenizer_from_dict

REPO = Path(__file__).resolve().parents[1]
CFG = ModelConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2, d_ff=16, max_seq_len=6, dtype="float32")


def make_state(seed=0, cfg=CFG):
    """Stand-in for a model and its optimizer: random parameters with the GPT-2 names and shapes."""
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s).astype(cfg.dtype) for k, s in expected_param_shapes(cfg).items()}
    opt = AdamW(params, lr=1e-2)
    opt.step({k: rng.standard_normal(p.shape).astype(cfg.dtype) for k, p in params.items()})
    return params, opt.state_dict()


def save(run_dir, step, seed=0, **kwargs):
    params, opt_state = make_state(seed)
    tok = CharTokenizer.fit("hello world")
    rng = np.random.default_rng(seed)
    trainer = {"rng": rng.bit_generator.state, "history": {"step": [0, step], "loss": [2.4, 1.9]}}
    return save_checkpoint(run_dir, step, params, opt_state, CFG.to_dict(), TrainConfig(steps=50).to_dict(),
                           tok.to_dict(), trainer, **kwargs)


def error_of(path):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert isinstance(err.value, ValueError)
    return msg


# -- shapes ------------------------------------------------------------------------------------------

def test_expected_param_shapes():
    shapes = expected_param_shapes(CFG)
    assert shapes["wte"] == (11, 8) and shapes["wpe"] == (6, 8)
    assert shapes["h.1.attn.c_attn.weight"] == (8, 24) and shapes["h.1.attn.c_attn.bias"] == (24,)
    assert shapes["h.0.mlp.c_fc.weight"] == (8, 16) and shapes["h.0.mlp.c_proj.weight"] == (16, 8)
    assert len(shapes) == 2 + 2 * 12 + 2 and "lm_head.weight" not in shapes
    lattice = ModelConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2, d_ff=16, max_seq_len=6, tie_weights=False,
                          embedding="lattice", attention_bias="lattice", lattice_features=5)
    shapes = expected_param_shapes(lattice.to_dict())
    assert shapes["lm_head.weight"] == (11, 8) and shapes["lattice.proj"] == (5, 8)
    assert shapes["h.1.attn.lattice_beta"] == (2,)
    assert len(shapes) == 2 + 2 * 13 + 2 + 2


# -- round trip ------------------------------------------------------------------------------------

def test_round_trip(tmp_path):
    run = tmp_path / "run"
    path = save(run, 123)
    assert path == run / "checkpoints" / "step_000123"
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "manifest.json", "optim.npz", "params.npz",
                                                     "tokenizer.json", "trainer.json"]
    assert (run / "latest").read_text().strip() == "checkpoints/step_000123"
    params, opt_state = make_state(0)
    for where in (run, path):  # a run dir follows `latest`; a checkpoint dir is read directly
        ck = load_checkpoint(where)
        assert isinstance(ck, Checkpoint) and ck.step == 123 and ck.path == path
        assert list(ck.params) == list(params)
        for k in params:
            np.testing.assert_array_equal(ck.params[k], params[k])
            assert ck.params[k].dtype == np.float32
        assert sorted(ck.opt_state) == sorted(opt_state)
        assert ck.opt_state["step"].shape == () and int(ck.opt_state["step"]) == 1
        np.testing.assert_array_equal(ck.opt_state["m_sum/wte"], opt_state["m_sum/wte"])
        assert ModelConfig.from_dict(ck.model_cfg) == CFG
        assert TrainConfig.from_dict(ck.train_cfg) == TrainConfig(steps=50)
        assert tokenizer_from_dict(ck.tokenizer) == CharTokenizer.fit("hello world")
        assert ck.trainer_state["history"] == {"step": [0, 123], "loss": [2.4, 1.9]}
    # the RNG state survives JSON and restores the same stream
    rng = generator_from_state(ck.trainer_state["rng"])
    np.testing.assert_array_equal(rng.integers(0, 1000, 5), np.random.default_rng(0).integers(0, 1000, 5))
    # plain numpy reads the files without pickle
    with np.load(path / "params.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["h.0.ln_1.weight"], params["h.0.ln_1.weight"])
    # the optimizer continues from the loaded state
    opt = AdamW({k: v.copy() for k, v in ck.params.items()})
    opt.load_state_dict(ck.opt_state)
    assert opt.t == 1


def test_optional_parts_and_refusals(tmp_path):
    params, opt_state = make_state(0)
    path = save_checkpoint(tmp_path, 0, params, opt_state, CFG.to_dict(), None, None, {})
    ck = load_checkpoint(tmp_path)
    assert ck.train_cfg is None and ck.tokenizer is None and ck.trainer_state == {}
    assert not (path / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="object"):
        save_checkpoint(tmp_path, 1, {**params, "x": np.array([None])}, opt_state, CFG.to_dict(), None, None, {})
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path, -1, params, opt_state, CFG.to_dict(), None, None, {})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000"]


def test_keeps_the_last_two_and_resaves_a_step(tmp_path):
    for step in (10, 20, 30, 40):
        save(tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000030", "step_000040"]
    assert load_checkpoint(tmp_path).step == 40
    save(tmp_path, 40, seed=5)  # the same step again replaces it
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000030", "step_000040"]
    np.testing.assert_array_equal(load_checkpoint(tmp_path).params["wte"], make_state(5)[0]["wte"])
    save(tmp_path, 50, keep=None)
    save(tmp_path, 60, keep=None)
    assert len(list_checkpoints(tmp_path)) == 4
    save(tmp_path, 70, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000070"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("mkdtemp", ["this Python's", "absolute, as CPython 3.12+"])
def test_resave_in_a_relative_run_dir(tmp_path, monkeypatch, mkdtemp):
    """`python -m cllm train` from a folder writes runs/<name>, a relative path; re-saving its last step
    must work whatever tempfile.mkdtemp returns for a relative dir (3.12 made it absolute)."""
    import tempfile
    if mkdtemp != "this Python's":
        native = tempfile.mkdtemp
        monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: os.path.abspath(native(*a, **k)))
    monkeypatch.chdir(tmp_path)
    run = Path("runs") / "r"
    save(run, 10)
    save(run, 10, seed=5)                                          # the re-save that pins `latest` meanwhile
    assert (run / "latest").read_text() == "checkpoints/step_000010\n"
    np.testing.assert_array_equal(load_checkpoint(run).params["wte"], make_state(5)[0]["wte"])
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


# -- damaged checkpoints -----------------------------------------------------------------------------

def test_truncated_npz(tmp_path):
    path = save(tmp_path, 1)
    f = path / "params.npz"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    msg = error_of(tmp_path)
    assert str(f) in msg and "truncated" in msg


def test_flipped_bytes_fail_the_checksum(tmp_path):
    path = save(tmp_path, 1)
    f = path / "optim.npz"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    msg = error_of(path)
    assert str(f) in msg and "checksum" in msg


def test_missing_file(tmp_path):
    path = save(tmp_path, 1)
    (path / "trainer.json").unlink()
    msg = error_of(tmp_path)
    assert str(path / "trainer.json") in msg and "missing" in msg


def _rewrite(path, name, data: bytes):
    """Replace a file and fix up the manifest, to reach the checks behind the checksums."""
    import hashlib

    (path / name).write_bytes(data)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))


def _npz_bytes(arrays):
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_shape_and_dtype_mismatch_with_config(tmp_path):
    path = save(tmp_path, 1)
    params, _ = make_state(0)
    _rewrite(path, "params.npz", _npz_bytes({**params, "h.1.mlp.c_fc.weight": np.zeros((8, 17), np.float32)}))
    msg = error_of(tmp_path)
    assert str(path / "params.npz") in msg and "'h.1.mlp.c_fc.weight'" in msg and "(8, 17)" in msg and "(8, 16)" in msg

    _rewrite(path, "params.npz", _npz_bytes({k: v.astype(np.float64) for k, v in params.items()}))
    msg = error_of(tmp_path)
    assert "params.npz" in msg and "float64" in msg

    _rewrite(path, "params.npz", _npz_bytes({k: v for k, v in params.items() if k != "ln_f.bias"}))
    assert "'ln_f.bias'" in error_of(tmp_path)

    _rewrite(path, "params.npz", _npz_bytes({**params, "extra": np.zeros(2, np.float32)}))
    assert "'extra'" in error_of(tmp_path)


def test_other_damage(tmp_path):
    path = save(tmp_path, 1)
    _rewrite(path, "params.npz", b"PK\x03\x04 this is not a zip archive")
    msg = error_of(tmp_path)
    assert str(path / "params.npz") in msg and "not a valid .npz" in msg

    path = save(tmp_path, 2)
    _, opt_state = make_state(0)
    _rewrite(path, "optim.npz", _npz_bytes({**opt_state, "m_sum/wte": np.zeros((3, 3), np.float32)}))
    assert "optim.npz" in error_of(tmp_path)

    path = save(tmp_path, 3)
    _rewrite(path, "config.json", json.dumps({"model": {**CFG.to_dict(), "d_model": 7}}).encode())
    assert "config.json" in error_of(tmp_path)

    path = save(tmp_path, 4)
    _rewrite(path, "tokenizer.json", json.dumps(CharTokenizer.fit("abcdefghijklmnop").to_dict()).encode())
    assert "tokenizer.json" in error_of(tmp_path)  # 16 characters, vocab_size 11

    path = save(tmp_path, 5)
    (path / "manifest.json").write_text("{")
    assert "manifest.json" in error_of(path)


def test_bad_paths(tmp_path):
    assert "nowhere" in error_of(tmp_path / "nowhere")
    assert str(tmp_path) in error_of(tmp_path)  # neither a run dir nor a checkpoint dir
    save(tmp_path, 1)
    (tmp_path / "latest").write_text("checkpoints/step_000999\n")
    msg = error_of(tmp_path)
    assert "latest" in msg and "step_000999" in msg


# -- atomicity: a save killed half way -----------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import cllm.checkpoint as ck
    from test_checkpoint import save  # tests/ is on the child's PYTHONPATH

    run_dir, point = sys.argv[1], sys.argv[2]
    save(run_dir, 1, seed=1)                      # a complete checkpoint

    def pause():
        print("PAUSED", flush=True)
        time.sleep(60)

    if point == "mid-file":                        # killed while optim.npz is half written
        write = ck._write_npz
        def slow_write(path, arrays):
            if path.name == "optim.npz":
                with open(path, "wb") as f:
                    f.write(b"PK\\x03\\x04" + bytes(100))
                    f.flush()
                    pause()
            write(path, arrays)
        ck._write_npz = slow_write
    elif point == "before-latest":                 # killed after the rename, before `latest` moved
        ck._replace_latest = lambda run_dir, final: pause()
    save(run_dir, 2, seed=2)
""")


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
@pytest.mark.parametrize("point", ["mid-file", "before-latest"])
def test_sigkill_during_save_leaves_the_previous_checkpoint(tmp_path, point):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent),
                                                          os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run), point],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline()
        assert line.strip() == "PAUSED", child.stderr.read()
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    ck = load_checkpoint(run)  # `latest` still names the complete step 1
    assert ck.step == 1
    np.testing.assert_array_equal(ck.params["wte"], make_state(1)[0]["wte"])
    assert (run / "latest").read_text().strip() == "checkpoints/step_000001"
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    if point == "mid-file":
        assert names[-1] == "step_000001" and any(n.startswith(".tmp-") for n in names)  # debris, never named
    else:
        assert "step_000002" in names and load_checkpoint(run / "checkpoints" / "step_000002").step == 2
    save(run, 3, seed=3)  # the next save works and clears the debris
    assert load_checkpoint(run).step == 3
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_atomic_writes_leave_readable_files(tmp_path):
    """The temporary file is private while it is written; the result has a normal file's mode."""
    target = tmp_path / "note.txt"
    atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert target.stat().st_mode & 0o777 == 0o644


# -- validation of what a file says (each a one-line CheckpointError naming the file) -------------------

def test_step_must_be_an_integer_that_agrees_everywhere(tmp_path):
    path = save(tmp_path, 1)
    _rewrite(path, "trainer.json", json.dumps({"step": None, "state": {}}).encode())  # then the manifest's too
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "step": None}))
    assert "manifest.json" in error_of(tmp_path)

    path = save(tmp_path, 2)
    trainer = json.loads((path / "trainer.json").read_text())
    _rewrite(path, "trainer.json", json.dumps({"step": 2, "state": {**trainer["state"], "step": 7}}).encode())
    msg = error_of(tmp_path)
    assert "trainer.json" in msg and "7" in msg  # the trainer state's step disagrees with the manifest's


def test_deep_nesting_is_a_one_line_error(tmp_path):
    path = save(tmp_path, 1)
    (path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)  # no checksum guards the manifest
    msg = error_of(tmp_path)
    assert "manifest.json" in msg and "nested" in msg
    path = save(tmp_path, 2)
    _rewrite(path, "trainer.json", b'{"step": 2, "state": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert "trainer.json" in error_of(tmp_path)


def test_tokenizer_json_of_the_wrong_types(tmp_path):
    from cllm.tokenizer import WordTokenizer

    path = save(tmp_path, 1)
    word = WordTokenizer.fit("a b a").to_dict()
    for bad in ({**word, "codes": [1, 2]}, {**word, "vocab": "<unk>ab"}, {"type": "char", "vocab": 5},
                {"type": "char", "vocab": "abc"}):
        _rewrite(path, "tokenizer.json", json.dumps(bad).encode())
        assert "tokenizer.json" in error_of(tmp_path), bad
    with pytest.raises(ValueError, match="codes"):
        tokenizer_from_dict({**word, "codes": [1, 2]})


def test_random_generators_come_from_a_fixed_table(monkeypatch):
    called = []
    monkeypatch.setattr(np.random, "seed", lambda *a: called.append(a))
    for name in ("seed", "default_rng", "__class__", None, 3):
        with pytest.raises(CheckpointError, match="unknown random generator"):
            generator_from_state({"bit_generator": name, "state": {}})
    assert called == []  # a file never names what gets called
    good = np.random.default_rng(0).bit_generator.state
    for bad in ([1], {"bit_generator": "PCG64"}, {**good, "state": {"state": "x", "inc": 1}},
                {**good, "state": {"state": -1, "inc": 1}}, {**good, "has_uint32": "yes"}):
        with pytest.raises(CheckpointError):
            generator_from_state(bad)
    for name, cls in (("PCG64DXSM", np.random.PCG64DXSM), ("Philox", np.random.Philox), ("SFC64", np.random.SFC64),
                      ("MT19937", np.random.MT19937)):
        rng = np.random.Generator(cls(5))
        state = json.loads(json.dumps(rng.bit_generator.state, default=lambda a: a.tolist()))  # as trainer.json
        np.testing.assert_array_equal(generator_from_state(state).random(3), rng.random(3))


def test_sizes_are_compared_before_a_file_is_read(tmp_path):
    import tracemalloc

    path = save(tmp_path, 1)
    f = path / "params.npz"
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size + (256 << 20))  # sparse: 256 MiB more than the manifest says, nothing on disk
    tracemalloc.start()
    try:
        msg = error_of(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"{size + (256 << 20)} bytes, manifest.json says {size}" in msg
    assert peak < (16 << 20), peak  # the file was not read


def test_save_refuses_params_that_do_not_match_the_config(tmp_path):
    save(tmp_path, 1)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    params, opt_state = make_state(0)
    bad = [({**params, "wte": np.zeros((11, 9), np.float32)}, opt_state, "'wte'"),
           ({k: v for k, v in params.items() if k != "ln_f.bias"}, opt_state, "'ln_f.bias'"),
           ({k: v.astype(np.float64) for k, v in params.items()}, opt_state, "float64"),
           ({**params, "extra": np.zeros(2, np.float32)}, opt_state, "'extra'"),
           (params, {**opt_state, "m_sum/wte": np.zeros((2, 2), np.float32)}, "m_sum/wte"),
           (params, {**opt_state, "m_sum/nothing": np.zeros(2, np.float32)}, "m_sum/nothing")]
    for p, o, needle in bad:
        with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
            save_checkpoint(tmp_path, 2, p, o, CFG.to_dict(), None, None, {})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before  # nothing written
    assert load_checkpoint(tmp_path).step == 1


def test_checkpoint_folders_have_a_normal_mode(tmp_path):
    path = save(tmp_path, 1)
    assert path.stat().st_mode & 0o777 == 0o755
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in path.iterdir())
    path = save(tmp_path, 1)  # a re-save too
    assert path.stat().st_mode & 0o777 == 0o755


def test_latest_must_stay_inside_the_run(tmp_path):
    other = tmp_path / "other"
    save(other, 5, seed=5)
    run = tmp_path / "run"
    save(run, 1)
    for name in ("../other/checkpoints/step_000005", str(other / "checkpoints" / "step_000005"),
                 "checkpoints/../../other/checkpoints/step_000005", "checkpoints/step_000001/.."):
        (run / "latest").write_text(name + "\n")
        msg = error_of(run)
        assert "latest" in msg, name
    (run / "checkpoints" / "step_000007").symlink_to(other / "checkpoints" / "step_000005")
    (run / "latest").write_text("checkpoints/step_000007\n")
    assert "latest" in error_of(run)  # a symlinked checkpoint folder
    (run / "latest").unlink()
    (run / "latest").symlink_to(other / "latest")
    assert "symlink" in error_of(run)
    (run / "latest").unlink()
    (run / "latest").write_text("checkpoints/step_000001\n")
    assert load_checkpoint(run).step == 1
