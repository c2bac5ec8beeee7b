"""The run directory: one writer (a lock, tested across real processes), a crash at any point of a
save leaves `latest` loadable, old checkpoints are retired so that readers can finish, and the
leftovers of an interrupted first save do not block a new run."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cllm.checkpoint as ck
from cllm.checkpoint import (RunDirLocked, RunLock, list_checkpoints, load_checkpoint, run_dir_is_empty,
                             resolve_checkpoint_dir)

from test_checkpoint import make_state, save  # tests/ is on the path, as for conftest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}

HOLDER = textwrap.dedent("""
    import sys, time
    from cllm.checkpoint import RunLock
    with RunLock(sys.argv[1]):
        print("LOCKED", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def holder(tmp_path):
    """A separate process that holds the lock on tmp_path/run until the test ends."""
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert child.stdout.readline().strip() == "LOCKED", child.stderr.read()
        yield run, child
    finally:
        child.kill()
        child.wait(timeout=10)


# -- the lock ------------------------------------------------------------------------------------------

@pytest.mark.skipif(os.name != "posix", reason="fcntl.flock")
def test_lock_excludes_another_process(holder):
    run, child = holder
    with pytest.raises(RunDirLocked, match=rf"in use by another process \(pid {child.pid}\)") as err:
        RunLock(run).acquire()
    assert "\n" not in str(err.value)
    child.kill()
    child.wait(timeout=10)
    assert (run / ck.LOCK).exists()  # a killed owner leaves its file, but the kernel dropped its lock
    with RunLock(run):
        assert (run / ck.LOCK).read_text().strip() == str(os.getpid())
    assert not (run / ck.LOCK).exists()


def test_lock_is_reentrant_and_leaves_nothing(tmp_path):
    run = tmp_path / "new" / "run"
    with RunLock(run):
        with RunLock(run):  # the trainer inside the command line takes it again
            assert (run / ck.LOCK).is_file()
        assert (run / ck.LOCK).is_file()  # still held by the outer one
        assert run_dir_is_empty(run)  # the lock file is not content
        assert list_checkpoints(run) == []
        with pytest.raises(ck.CheckpointError, match="neither a run directory"):
            resolve_checkpoint_dir(run)
    assert not run.exists()  # created by the lock, nothing written: removed again
    user = tmp_path / "mine"
    user.mkdir()
    with RunLock(user):
        pass
    assert user.is_dir() and list(user.iterdir()) == []  # a folder the user made stays, empty


@pytest.mark.skipif(os.name != "posix", reason="fcntl.flock")
def test_trainer_takes_the_lock(holder):
    import cllm
    from cllm.train import Trainer

    run, child = holder
    text = "abcdefgh " * 200
    tok = cllm.CharTokenizer.fit(text)
    ids = tok.encode(text)
    model = cllm.Model(cllm.ModelConfig(vocab_size=tok.vocab_size, d_model=8, n_layers=1, n_heads=2, d_ff=16,
                                        max_seq_len=8), seed=0)
    trainer = Trainer(model, ids, ids, cllm.TrainConfig(batch_size=2, seq_len=8, steps=3), run_dir=run,
                      progress=False)
    with pytest.raises(RunDirLocked, match=str(child.pid)):
        trainer.train()
    assert trainer.step == 0 and not (run / "checkpoints").exists()


@pytest.mark.skipif(os.name != "posix", reason="fcntl.flock")
def test_two_cli_runs_into_one_folder(tmp_path):
    """Started together: one trains, the other is refused in one line (locked, or not empty if the
    first had finished); the folder holds the one run, whole."""
    data = tmp_path / "t.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "same"
    cmd = [sys.executable, "-m", "cllm", "train", "--data", str(data), "--out", str(out), "--d-model", "16",
           "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--seq-len", "16", "--batch-size", "4",
           "--steps", "30", "--checkpoint-interval", "5", "--no-progress", "--sample-tokens", "0"]
    procs = [subprocess.Popen(cmd + ["--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=ENV) for seed in (1, 2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    assert loser[2].count("\n") == 1 and ("in use by another process" in loser[2] or "not empty" in loser[2])
    winner_seed = 1 if results[0][0] == 0 else 2
    got = load_checkpoint(out)
    assert got.step == 30 and got.train_cfg["seed"] == winner_seed
    assert all(load_checkpoint(p).train_cfg["seed"] == winner_seed for p in list_checkpoints(out))


# -- a crash at any point of a save ------------------------------------------------------------------------

class Crash(BaseException):
    """The process died here: this and every later file operation fails."""


_OPS = [(os, "replace"), (os, "link"), (os, "chmod"), (shutil, "rmtree"), (shutil, "copyfile"), (tempfile, "mkdtemp"),
        (tempfile, "mkstemp"), (ck, "_write_bytes"), (ck, "_write_npz"), (ck, "_fsync_dir")]


def _inject(mp, crash_at):
    """Count the file operations of a save; the one numbered ``crash_at`` and all after it raise Crash."""
    calls = {"n": 0, "crashed": False}
    for mod, name in _OPS:
        real = getattr(mod, name)

        def op(*a, _real=real, **k):
            if calls["crashed"] or calls["n"] == crash_at:
                calls["crashed"] = True
                raise Crash(name)
            calls["n"] += 1
            return _real(*a, **k)

        mp.setattr(mod, name, op)
    return calls


def _count_ops(tmp_path, prepare, step):
    run = tmp_path / "count"
    prepare(run)
    with pytest.MonkeyPatch.context() as mp:
        calls = _inject(mp, crash_at=-1)
        save(run, step, seed=5)
    return calls["n"]


@pytest.mark.parametrize("case", ["re-save", "new step", "first save"])
def test_a_crash_at_any_point_of_a_save_leaves_latest_loadable(tmp_path, case):
    def prepare(run):
        if case != "first save":
            save(run, 30, seed=3)
            save(run, 40, seed=4)

    step = 40 if case == "re-save" else 50
    n = _count_ops(tmp_path, prepare, step)
    assert n > 10
    for crash_at in range(n):
        run = tmp_path / f"run{crash_at}"
        prepare(run)
        with pytest.MonkeyPatch.context() as mp:
            calls = _inject(mp, crash_at)
            with pytest.raises(Crash):
                save(run, step, seed=5)
            assert calls["crashed"]
        if case == "first save" and run_dir_is_empty(run):
            pass  # nothing complete yet: a new run may start here (test_cli covers the command)
        else:
            got = load_checkpoint(run)
            expect = {4: 40, 5: step}
            seed = next(s for s in (4, 5) if np.array_equal(got.params["wte"], make_state(s)[0]["wte"]))
            assert got.step == expect[seed], (crash_at, got.step, seed)
            if case == "first save":
                assert seed == 5
        save(run, 60, seed=6)  # the next save works and clears the debris
        assert load_checkpoint(run).step == 60
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], crash_at
        shutil.rmtree(run)


def test_resave_points_latest_at_a_pinned_copy_meanwhile(tmp_path, monkeypatch):
    save(tmp_path, 40, seed=4)
    seen = []
    real = os.replace

    def spy(src, dst):
        if Path(src).name == "step_000040":  # the old folder moves aside: `latest` must not name it now
            seen.append((tmp_path / "latest").read_text().strip())
            assert load_checkpoint(tmp_path).step == 40
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    save(tmp_path, 40, seed=5)
    monkeypatch.undo()
    assert len(seen) == 1 and seen[0].startswith("checkpoints/.tmp-pin-step_000040-")
    assert (tmp_path / "latest").read_text().strip() == "checkpoints/step_000040"
    np.testing.assert_array_equal(load_checkpoint(tmp_path).params["wte"], make_state(5)[0]["wte"])


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
def test_sigkill_between_the_renames_of_a_resave(tmp_path):
    """The defaults re-save (2000 steps, interval 500): a kill there leaves `latest` loadable."""
    child_code = textwrap.dedent("""
        import os, sys, time
        import cllm.checkpoint as ck
        from test_checkpoint import save
        save(sys.argv[1], 40, seed=4)
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if os.path.basename(str(src)) == "step_000040":  # old one moved aside, new one not yet in place
                print("PAUSED", flush=True)
                time.sleep(60)
        os.replace = replace
        save(sys.argv[1], 40, seed=5)
    """)
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", child_code, str(run)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert child.stdout.readline().strip() == "PAUSED", child.stderr.read()
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    got = load_checkpoint(run)
    assert got.step == 40
    np.testing.assert_array_equal(got.params["wte"], make_state(4)[0]["wte"])


# -- the first save interrupted ------------------------------------------------------------------------

def test_leftovers_of_an_interrupted_first_save_count_as_empty(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / ".tmp-step_000010-abc").mkdir(parents=True)
    (run / "checkpoints" / ".tmp-step_000010-abc" / "params.npz").write_bytes(b"PK half")
    (run / ck.LOCK).write_text("12345\n")  # stale: its process is gone
    assert run_dir_is_empty(run)
    with pytest.raises(ck.CheckpointError, match="no complete checkpoint"):
        load_checkpoint(run)
    (run / "notes.txt").write_text("mine")
    assert not run_dir_is_empty(run)


def test_no_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    save(tmp_path, 10, seed=1)
    save(tmp_path, 20, seed=2)
    (tmp_path / "latest").unlink()  # killed after the rename, before `latest` was written
    assert load_checkpoint(tmp_path).step == 20
    assert not run_dir_is_empty(tmp_path)


# -- retiring old checkpoints while someone reads them ----------------------------------------------------

def test_old_checkpoints_are_renamed_before_they_are_deleted(tmp_path, monkeypatch):
    removed = []
    real = shutil.rmtree

    def spy(path, *a, **k):
        removed.append(Path(path).name)
        return real(path, *a, **k)

    monkeypatch.setattr(shutil, "rmtree", spy)
    for step in (10, 20, 30, 40):
        save(tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000030", "step_000040"]
    assert len([n for n in removed if n.startswith(".retired-step_0000")]) == 2
    assert not [n for n in removed if n.startswith("step_")]  # never deleted in place under its own name


def test_a_reader_that_opened_a_checkpoint_finishes_it(tmp_path, monkeypatch):
    save(tmp_path, 10, seed=1)
    real = ck._open_all

    def open_then_retire(ckpt, files, opened):
        real(ckpt, files, opened)
        save(tmp_path, 20, seed=2)  # keep=2: step 10 stays
        save(tmp_path, 30, seed=3)  # step 10 retired while this reader holds its files
        assert not ckpt.exists()

    monkeypatch.setattr(ck, "_open_all", open_then_retire)
    got = load_checkpoint(tmp_path)
    assert got.step == 10
    np.testing.assert_array_equal(got.params["wte"], make_state(1)[0]["wte"])


def test_a_checkpoint_gone_before_it_was_opened_is_retried_through_latest(tmp_path, monkeypatch):
    save(tmp_path, 10, seed=1)
    real = ck.resolve_checkpoint_dir
    calls = []

    def resolve_then_retire(path):
        found = real(path)
        calls.append(found.name)
        if len(calls) == 1:
            save(tmp_path, 20, seed=2)
            save(tmp_path, 30, seed=3)
        return found

    monkeypatch.setattr(ck, "resolve_checkpoint_dir", resolve_then_retire)
    got = load_checkpoint(tmp_path)
    assert calls == ["step_000010", "step_000030"] and got.step == 30
    np.testing.assert_array_equal(got.params["wte"], make_state(3)[0]["wte"])
    calls.clear()
    monkeypatch.setattr(ck, "resolve_checkpoint_dir", real)
    gone = tmp_path / "checkpoints" / "step_000020"

    def resolve_then_remove(path):
        found = real(path)
        ck._retire(found)
        return found

    monkeypatch.setattr(ck, "resolve_checkpoint_dir", resolve_then_remove)
    with pytest.raises(ck.CheckpointError, match="removed while it was being read"):
        load_checkpoint(gone)  # a checkpoint folder named directly has nothing to retry through
