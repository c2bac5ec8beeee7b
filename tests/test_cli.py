"""The command line: a tiny end-to-end run, and every user error as one line with exit status 2."""
import subprocess
import sys

import numpy as np
import pytest

from cllm.__main__ import main

TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--seq-len", "16",
        "--batch-size", "4", "--eval-interval", "3", "--no-progress", "--sample-tokens", "20"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    return path


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, argv, needle):
    code, out, err = run(capsys, argv)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cllm: error:"), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err + out


def test_train_resume_generate(capsys, tmp_path, text_file):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, ["train", "--data", str(text_file), "--steps", "6", "--out", str(out_dir)] + TINY)
    assert code == 0, err
    assert "final validation loss" in out and "sample:" in out
    assert (out_dir / "loss.png").stat().st_size > 1000 and (out_dir / "latest").exists()
    code, out, err = run(capsys, ["train", "--data", str(text_file), "--steps", "9", "--resume", str(out_dir),
                                  "--no-progress", "--sample-tokens", "0", "--workers", "2"])
    assert code == 0, err
    assert "resuming" in out and "at step 9" in out
    code, out, err = run(capsys, ["generate", "--checkpoint", str(out_dir), "--prompt", "the ", "--tokens", "12",
                                  "--greedy"])
    assert code == 0 and out.startswith("the ") and len(out.rstrip("\n")) == 16


def test_gradcheck_command(capsys):
    code, out, _ = run(capsys, ["gradcheck", "--max-entries", "5"])
    assert code == 0 and "PASS" in out and "h.1.mlp.c_fc.weight" in out


def test_missing_file(capsys, tmp_path):
    assert_user_error(capsys, ["train", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "r")],
                      "no such file")
    assert not (tmp_path / "r").exists()


def test_empty_and_binary_files(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_user_error(capsys, ["train", "--data", str(empty), "--out", str(tmp_path / "r")], "empty")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    assert_user_error(capsys, ["train", "--data", str(binary), "--out", str(tmp_path / "r")], "binary")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 50)
    assert_user_error(capsys, ["train", "--data", str(latin), "--out", str(tmp_path / "r")], "UTF-8")
    assert not (tmp_path / "r").exists()


def test_too_little_text(capsys, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("abc", encoding="utf-8")
    assert_user_error(capsys, ["train", "--data", str(short), "--out", str(tmp_path / "r")] + TINY, "too few")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags,needle", [
    (["--lr", "abc"], "--lr"), (["--steps", "0"], "--steps"), (["--d-model", "-3"], "--d-model"),
    (["--dropout", "1.5"], "dropout"), (["--n-heads", "3"], "divisible"), (["--optimizer", "adam"], "--optimizer"),
    (["--lr", "nan"], "--lr"), (["--bogus"], "unrecognized"), (["--workers", "0"], "--workers"),
])
def test_bad_flag_values(capsys, tmp_path, text_file, flags, needle):
    assert_user_error(capsys, ["train", "--data", str(text_file), "--out", str(tmp_path / "r")] + flags, needle)
    assert not (tmp_path / "r").exists()


def test_existing_run_directory_is_not_overwritten(capsys, tmp_path, text_file):
    out_dir = tmp_path / "taken"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    assert_user_error(capsys, ["train", "--data", str(text_file), "--out", str(out_dir)], "not empty")
    assert (out_dir / "keep.txt").read_text() == "mine" and len(list(out_dir.iterdir())) == 1


@pytest.fixture
def trained(capsys, tmp_path, text_file):
    out_dir = tmp_path / "trained"
    assert main(["train", "--data", str(text_file), "--steps", "2", "--out", str(out_dir)] + TINY) == 0
    capsys.readouterr()
    return out_dir


def test_prompt_outside_vocabulary(capsys, trained):
    assert_user_error(capsys, ["generate", "--checkpoint", str(trained), "--prompt", "héllo €"], "'é', '€'")


def test_unreadable_checkpoints(capsys, tmp_path, trained):
    assert_user_error(capsys, ["generate", "--checkpoint", str(tmp_path / "none"), "--prompt", "a"], "no such")
    ckpt = trained / (trained / "latest").read_text().strip()
    params = ckpt / "params.npz"
    data = params.read_bytes()
    params.write_bytes(data[: len(data) // 2])  # truncated
    assert_user_error(capsys, ["generate", "--checkpoint", str(trained), "--prompt", "a"], "params.npz")
    params.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])  # one flipped byte
    assert_user_error(capsys, ["generate", "--checkpoint", str(trained), "--prompt", "a"], "checksum")
    assert_user_error(capsys, ["train", "--resume", str(trained), "--data", str(tmp_path / "trained" / "latest")],
                      "params.npz")


def test_real_process_exit_status_and_single_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cllm", "train", "--data", str(tmp_path / "missing.txt")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_lattice_run_gets_frequency_rank_codes(capsys, tmp_path, text_file):
    out_dir = tmp_path / "lat"
    code, _, err = run(capsys, ["train", "--data", str(text_file), "--steps", "2", "--out", str(out_dir),
                                "--embedding", "lattice", "--attention-bias", "lattice"] + TINY)
    assert code == 0, err
    from cllm.checkpoint import load_checkpoint
    from cllm.tokenizer import tokenizer_from_dict
    ck = load_checkpoint(out_dir)
    tok = tokenizer_from_dict(ck.tokenizer)
    codes = ck.model_cfg["lattice_codes"]
    assert codes[int(tok.encode(" ")[0])] == 2  # the space is the most frequent character: the first prime
    assert sorted(codes)[:3] == [2, 3, 5] and len(set(codes)) == tok.vocab_size
