"""The command line: a tiny end-to-end run, and every user error as one line with exit status 2."""
import subprocess
import sys

import numpy as np
import pytest

from cllm.__main__ import main  # noqa: F401
from conftest import TINY_ARGS, assert_user_error, run_cli

TINY = TINY_ARGS + ["--sample-tokens", "20"]
run = run_cli


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


# -- the run directory on the command line -----------------------------------------------------------

def _train(capsys, text_file, out, *flags):
    code, stdout, err = run(capsys, ["train", "--data", str(text_file), "--out", str(out)] + TINY + list(flags))
    assert code == 0, err
    return stdout


def _snapshot(run_dir):
    """Every file of a run with its bytes: to show that nothing changed."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_resume_into_another_runs_folder_is_refused(capsys, tmp_path, text_file):
    base, other = tmp_path / "base", tmp_path / "runB"
    _train(capsys, text_file, base, "--steps", "2")
    _train(capsys, text_file, other, "--steps", "3", "--seed", "9")
    before = _snapshot(other)
    assert_user_error(capsys, ["train", "--data", str(text_file), "--resume", str(base), "--out", str(other),
                               "--steps", "4", "--no-progress"], "not empty")
    assert _snapshot(other) == before
    # the same run spelled another way is the same run; an empty folder takes the resumed run
    code, out, err = run(capsys, ["train", "--data", str(text_file), "--resume", str(base), "--out",
                                  str(tmp_path / "." / "base"), "--steps", "4", "--no-progress", "--sample-tokens", "0"])
    assert code == 0, err
    (tmp_path / "fresh").mkdir()
    code, out, err = run(capsys, ["train", "--data", str(text_file), "--resume", str(base), "--out",
                                  str(tmp_path / "fresh"), "--steps", "5", "--no-progress", "--sample-tokens", "0"])
    assert code == 0, err
    from cllm.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "fresh").step == 5 and load_checkpoint(base).step == 4


@pytest.mark.skipif(sys.platform != "linux", reason="fcntl.flock")
def test_a_locked_run_directory_is_refused(tmp_path, text_file):
    import os
    import textwrap
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from cllm.checkpoint import RunLock
        with RunLock(sys.argv[1]):
            print("LOCKED", flush=True)
            time.sleep(60)
        """), str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        for extra in ([], ["--resume", str(out)]):
            result = subprocess.run([sys.executable, "-m", "cllm", "train", "--data", str(text_file), "--out", str(out)]
                                    + TINY + extra, capture_output=True, text=True, timeout=120, env=env)
            assert result.returncode == 2, result.stderr
            assert result.stderr.count("\n") == 1 and f"in use by another process (pid {holder.pid})" in result.stderr
            assert "data:" not in result.stdout
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_an_unwritable_output_is_refused_before_step_1(capsys, tmp_path, text_file, monkeypatch):
    import errno
    import os

    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file")
    for out in (blocker / "run", blocker):
        code, stdout, err = run(capsys, ["train", "--data", str(text_file), "--out", str(out)] + TINY)
        assert code == 2 and err.count("\n") == 1 and str(out) in err, err
        assert "step" not in stdout and "final" not in stdout
    assert blocker.read_text() == "a regular file"

    readonly = tmp_path / "ro"
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(fn):
        def wrapped(path, *a, **k):
            if str(path).startswith(str(readonly)):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return fn(path, *a, **k)
        return wrapped

    monkeypatch.setattr(os, "open", refuse(real_open))
    monkeypatch.setattr(os, "mkdir", refuse(real_mkdir))
    assert_user_error(capsys, ["train", "--data", str(text_file), "--out", str(readonly / "run")] + TINY,
                      "Read-only file system")


def test_resume_from_a_checkpoint_folder_continues_its_run(capsys, tmp_path, text_file):
    from cllm.checkpoint import list_checkpoints, load_checkpoint

    out = tmp_path / "run"
    _train(capsys, text_file, out, "--steps", "4", "--checkpoint-interval", "2")
    older, newest = list_checkpoints(out)
    code, stdout, err = run(capsys, ["train", "--data", str(text_file), "--resume", str(newest), "--steps", "6",
                                     "--no-progress", "--sample-tokens", "0"])
    assert code == 0, err
    assert f"run directory: {out}\n" in stdout
    assert load_checkpoint(out).step == 6
    assert not list(tmp_path.rglob("step_*/checkpoints"))  # nothing nested inside a checkpoint
    older = list_checkpoints(out)[0]
    assert_user_error(capsys, ["train", "--data", str(text_file), "--resume", str(older), "--no-progress"],
                      "not the newest checkpoint")
    assert_user_error(capsys, ["train", "--data", str(text_file), "--resume", str(out), "--out",
                               str(older / "sub"), "--no-progress"], "inside the checkpoint folder")
    assert not (older / "sub").exists()


def test_a_folder_with_only_leftovers_takes_a_new_run(capsys, tmp_path, text_file):
    out = tmp_path / "run"
    (out / "checkpoints" / ".tmp-step_000002-xyz").mkdir(parents=True)  # a first save killed half way
    (out / ".lock").write_text("999999\n")
    assert_user_error(capsys, ["train", "--data", str(text_file), "--resume", str(out), "--no-progress"],
                      "no complete checkpoint")
    _train(capsys, text_file, out, "--steps", "2")
    from cllm.checkpoint import load_checkpoint
    assert load_checkpoint(out).step == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002"]


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path, text_file):
    import os
    import signal
    from pathlib import Path

    from cllm.checkpoint import load_checkpoint

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-m", "cllm", "train", "--data", str(text_file), "--out", str(out),
                              "--steps", "100000"] + TINY + ["--eval-interval", "1"],  # a line per step to wait for
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        for line in child.stdout:
            if line.startswith("step      3:"):
                break
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    step = load_checkpoint(out).step
    assert step >= 3 and lines[0] == f"cllm: interrupted at step {step}; saved; resume with --resume {out}"


def test_a_failed_loss_plot_warns_and_the_report_follows(capsys, tmp_path, text_file, monkeypatch):
    import errno

    import matplotlib.figure

    def disk_full(self, fname, *a, **k):
        fname.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full)
    out = tmp_path / "run"
    code, stdout, err = run(capsys, ["train", "--data", str(text_file), "--steps", "2", "--out", str(out)] + TINY)
    assert code == 0, err
    assert err.strip().splitlines() == [f"cllm: warning: could not write {out}/loss.png (No space left on device); "
                                        "the checkpoint is complete"]
    assert "final validation loss" in stdout and "time:" in stdout and "sample:" in stdout
    assert not [p for p in out.iterdir() if "loss.png" in p.name]  # no half-written plot, no temp file


def test_end_of_run_counts_are_true(capsys, tmp_path, text_file):
    out = tmp_path / "run"
    stdout = _train(capsys, text_file, out, "--steps", "6", "--batch-size", "1", "--eval-batches", "1")
    assert "for 6 steps" in stdout and "mean over the first 4 of 11 windows" in stdout
    code, stdout, err = run(capsys, ["train", "--data", str(text_file), "--resume", str(out), "--steps", "9",
                                     "--no-progress", "--sample-tokens", "0", "--eval-batches", "3"])
    assert code == 0, err
    assert "for 3 steps" in stdout and "mean over all 11 windows" in stdout  # 3 batches of 4 cover 11


@pytest.mark.parametrize("flags,needle", [
    (["--lr", "0.5"], "--lr 0.5 conflicts with the checkpoint's lr 0.001"),
    (["--tokenizer", "word"], "--tokenizer word conflicts with the checkpoint's tokenizer 'char'"),
    (["--d-model", "32"], "--d-model 32 conflicts with the checkpoint's d_model 16"),
    (["--activation", "tanh"], "--activation tanh conflicts"), (["--untied"], "--untied conflicts"),
    (["--seed", "3"], "--seed 3 conflicts"), (["--seq-len", "8"], "--seq-len 8 conflicts"),
])
def test_resume_refuses_a_conflicting_flag(capsys, trained, text_file, flags, needle):
    from cllm.checkpoint import load_checkpoint

    before = load_checkpoint(trained).step
    assert_user_error(capsys, ["train", "--data", str(text_file), "--resume", str(trained), "--steps", "4",
                               "--no-progress"] + flags, needle)
    assert load_checkpoint(trained).step == before


def test_resume_applies_the_changeable_flags(capsys, trained, text_file):
    from cllm.checkpoint import load_checkpoint

    # flags equal to the checkpoint's are fine; --steps, --eval-interval, --checkpoint-interval apply
    code, stdout, err = run(capsys, ["train", "--data", str(text_file), "--resume", str(trained), "--d-model", "16",
                                     "--lr", "0.001", "--steps", "5", "--eval-interval", "1", "--checkpoint-interval",
                                     "1", "--no-progress", "--sample-tokens", "0"])
    assert code == 0, err
    assert [line.split(":")[0] for line in stdout.splitlines() if line.startswith("step ")] == \
        ["step      3", "step      4", "step      5"]
    ck = load_checkpoint(trained)
    assert ck.step == 5 and ck.train_cfg["eval_interval"] == 1 and ck.train_cfg["lr"] == 0.001
    # without --steps a resumed run keeps its own target: finished, nothing more to train
    code, stdout, err = run(capsys, ["train", "--data", str(text_file), "--resume", str(trained), "--no-progress",
                                     "--sample-tokens", "0"])
    assert code == 0 and "for 0 steps" in stdout and load_checkpoint(trained).step == 5


def test_train_defaults_are_unchanged():
    from cllm.__main__ import _given_train_flags, build_parser
    from cllm.config import ModelConfig, TrainConfig

    args = build_parser().parse_args(["train"])
    assert _given_train_flags(args) == set()
    m, t = ModelConfig(), TrainConfig()
    assert (args.d_model, args.n_layers, args.activation, args.dtype, args.untied) == \
        (m.d_model, m.n_layers, m.activation, m.dtype, False)
    assert (args.steps, args.lr, args.seq_len, args.seed, args.workers, args.eval_batches, args.tokenizer) == \
        (t.steps, t.lr, t.seq_len, t.seed, None, None, "char")
    args = build_parser().parse_args(["train", "--lr", "0.01", "--untied"])
    assert _given_train_flags(args) == {"lr", "untied"} and args.lr == 0.01 and args.steps == t.steps


@pytest.mark.parametrize("interval", ["1", "500"])
def test_an_overflowing_update_stops_the_run_without_saving_it(capsys, tmp_path, text_file, interval):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, ["train", "--data", str(text_file), "--out", str(out), "--lr", "1e39",
                                     "--warmup-steps", "0", "--steps", "1", "--checkpoint-interval", interval] + TINY)
    assert code == 1 and "final validation loss" not in stdout
    line = [ln for ln in err.splitlines() if ln.startswith("cllm:")]
    assert len(line) == 1 and "step 1: parameter" in line[0] and "not finite" in line[0], err
    assert "last good checkpoint" not in line[0]
    assert not (out / "latest").exists() and not list((out / "checkpoints").glob("step_*"))


def test_generate_from_the_shipped_model(capsys, tmp_path):
    """--pretrained samples from cllm/pretrained/main_job, as --checkpoint of that folder does; a
    damaged copy of the folder is refused in one line."""
    import shutil

    from cllm.pretrained import MAIN_JOB

    code, out, _ = run_cli(capsys, ["generate", "--pretrained", "--prompt", "The ", "--tokens", "40", "--seed", "1"])
    assert code == 0 and out.startswith("The ") and len(out.rstrip("\n")) >= 40
    code, again, _ = run_cli(capsys, ["generate", "--checkpoint", str(MAIN_JOB), "--prompt", "The ",
                                      "--tokens", "40", "--seed", "1"])
    assert code == 0 and again == out
    assert_user_error(capsys, ["generate", "--pretrained", "--checkpoint", str(MAIN_JOB), "--prompt", "a"],
                      "not allowed with argument --pretrained")
    copy = tmp_path / "weights"
    shutil.copytree(MAIN_JOB, copy)
    (copy / "params.npz").write_bytes(b"PK" + b"\0" * 100)
    assert_user_error(capsys, ["generate", "--checkpoint", str(copy), "--prompt", "a"], "params.npz")
