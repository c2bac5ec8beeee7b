"""Checkpoints: save and load a training run without pickle, with atomic writes and checksums.

Layout of a run directory::

    run_dir/
      .lock                       held (fcntl.flock) by the one process writing the run; see RunLock
      latest                      "checkpoints/step_000123": the newest complete checkpoint
      checkpoints/
        step_000100/              an older one, kept (``keep``, default 2)
        step_000123/
          params.npz              model parameters, name -> array
          optim.npz               optimizer state_dict ("step", "m_sum/<param>", "v_sum/<param>", ...)
          config.json             {"model": ModelConfig.to_dict(), "train": TrainConfig.to_dict() | null}
          tokenizer.json          tokenizer.to_dict() (absent when none was given)
          trainer.json            {"step": 123, "state": {RNG states, history, ...}}
          manifest.json           {"format", "version", "step", "files": {name: {"bytes", "sha256"}}}

How a save stays atomic: everything is written into a temporary folder ``checkpoints/.tmp-*``, each
file is fsync'ed, the folder is renamed (``os.replace``) to ``step_000123``, and only then is
``latest`` replaced (temp file + ``os.replace``). Re-saving a step that exists first points
``latest`` at a pinned copy of the old folder (``.tmp-pin-step_000123-*``, hard links, no data
copied), so that ``latest`` never names a folder that is being replaced. Old checkpoints beyond
``keep`` are retired last: renamed to ``.retired-*`` in one step, then deleted, so that no reader finds
a half-deleted checkpoint under its own name. A crash (even SIGKILL) at any point leaves ``latest``
naming a complete, verified checkpoint: the previous one or the new one. Leftover ``.tmp-*`` and
``.retired-*`` folders are removed by the next save, and a run directory that holds nothing else
counts as empty (``run_dir_is_empty``).

One writer per run directory: ``RunLock`` takes an exclusive, non-blocking ``fcntl.flock`` on
``run_dir/.lock`` for a run's whole lifetime; a second writer gets ``RunDirLocked`` naming the pid
that holds it.

Loading verifies every file against the manifest (its size first, from ``fstat``, then its sha256),
loads arrays with ``allow_pickle=False``, and checks the parameters against the shapes and dtype that
config.json's ``ModelConfig`` implies. ``latest`` must name a folder directly inside
``run_dir/checkpoints/`` (no ``..``, no absolute path, no symlink). Anything wrong raises
``CheckpointError`` (a ValueError) with one line that names the file and the problem. The files are
opened together before any is read, so a checkpoint retired by a concurrent save can still be read to
the end; a run directory whose checkpoint vanished before it was opened is retried once through
``latest``.

What the sha256 manifest is for: it detects damage (a truncated or half-written file, bit rot, a copy
gone wrong). It is not a signature and guards against nobody: whoever can edit the files can rewrite
the manifest to match. The loader never executes or looks up anything a file names (no pickle, a fixed
table of random generator classes), so an edited checkpoint can hold wrong numbers but cannot run code.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from ._validate import is_int
from ._atomic import _fsync_dir, atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported)
from .config import ModelConfig, TrainConfig

FORMAT = "cllm-checkpoint"
VERSION = 1
LATEST = "latest"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
_TMP_PREFIX = ".tmp-"
_PIN_PREFIX = ".tmp-pin-"       # a hard-linked copy that `latest` names while its step is re-saved
_RETIRED_PREFIX = ".retired-"   # an old checkpoint on its way out (renamed first, then deleted)
_NAME = re.compile(r"^step_(\d+)$")
_LATEST_NAME = re.compile(r"^checkpoints/(step_\d+|\.tmp-pin-step_\d+-[A-Za-z0-9_]+)$")  # what `latest` may say
_DIR_MODE = 0o755
_REQUIRED = ("params.npz", "optim.npz", "config.json", "trainer.json")
_OPTIONAL = ("tokenizer.json",)


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted or does not match its configuration."""


@dataclass
class Checkpoint:
    """Everything ``load_checkpoint`` read back. Configs and tokenizer are plain dicts
    (``ModelConfig.from_dict(ck.model_cfg)``, ``tokenizer_from_dict(ck.tokenizer)``)."""

    step: int
    params: dict
    opt_state: dict
    model_cfg: dict
    train_cfg: Optional[dict]
    tokenizer: Optional[dict]
    trainer_state: dict
    path: Optional[Path] = field(default=None, compare=False)


# ---------------------------------------------------------------------------------------------------
# helpers

def expected_param_shapes(cfg: Union[ModelConfig, Mapping]) -> dict:
    """Parameter name -> shape for a ModelConfig: the model's own layout, which the loader checks
    files against."""
    from .model import param_shapes

    if isinstance(cfg, Mapping):
        cfg = ModelConfig.from_dict(dict(cfg))
    return param_shapes(cfg)


# The random generators a checkpoint may name: a fixed table, so that a file never names what is called.
_BIT_GENERATORS = {"PCG64": np.random.PCG64, "PCG64DXSM": np.random.PCG64DXSM, "Philox": np.random.Philox,
                   "SFC64": np.random.SFC64, "MT19937": np.random.MT19937}


def generator_from_state(state: Mapping) -> np.random.Generator:
    """Rebuild a ``np.random.Generator`` from ``rng.bit_generator.state`` (as stored in trainer.json).

    Only the bit generators of a fixed table (PCG64, PCG64DXSM, Philox, SFC64, MT19937) are built; a
    state of any other shape raises CheckpointError."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"random generator state must be an object, got {type(state).__name__}")
    name = state.get("bit_generator")
    if not isinstance(name, str) or name not in _BIT_GENERATORS:
        raise CheckpointError(f"unknown random generator {name!r} (expected one of {', '.join(_BIT_GENERATORS)})")
    if not isinstance(state.get("state"), Mapping):
        raise CheckpointError(f"random generator state of {name} has no 'state' object")
    bitgen = _BIT_GENERATORS[name]()
    try:
        bitgen.state = dict(state)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise CheckpointError(f"invalid {name} random generator state ({type(exc).__name__})") from None
    return np.random.Generator(bitgen)


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(run_dir) -> list:
    """Complete checkpoint folders of a run (those with a manifest), sorted by step."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / "manifest.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _is_leftover(name: str) -> bool:
    return name.startswith(_TMP_PREFIX) or name.startswith(_RETIRED_PREFIX)


def run_dir_is_empty(run_dir) -> bool:
    """True when ``run_dir`` does not exist, or holds nothing but what a run leaves behind without
    having saved anything: the lock file, and a ``checkpoints/`` folder with only the ``.tmp-*`` /
    ``.retired-*`` debris of an interrupted save. Such a folder may take a new run (its next save clears
    the debris); a folder with anything else in it belongs to someone."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return True
    if not run_dir.is_dir():
        return False
    for p in run_dir.iterdir():
        if p.name == LOCK and p.is_file() and not p.is_symlink():
            continue
        if (p.name == CHECKPOINTS and p.is_dir() and not p.is_symlink()
                and all(_is_leftover(q.name) for q in p.iterdir())):
            continue
        return False
    return True


def check_run_dir_writable(run_dir) -> None:
    """Create ``run_dir/checkpoints/`` and a file in it (removed again), so that an output location
    that cannot be written is reported before any training rather than at the first save.
    ValueError naming the folder when it cannot be written."""
    root = Path(run_dir) / CHECKPOINTS
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}probe-", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{run_dir}: cannot write the run directory ({exc.strerror or exc})") from None


class RunDirLocked(OSError):
    """Another process holds the run directory's lock."""


# Run directories this process has locked: real path -> [RunLock, depth]. The lock is per process:
# the command line takes it for the whole run, and the Trainer it drives takes it again (a no-op).
_HELD: dict = {}


class RunLock:
    """An exclusive lock on a run directory for as long as a run writes into it::

        with RunLock(run_dir):      # creates run_dir if needed; RunDirLocked if another process has it
            ...train, save...

    ``fcntl.flock`` (non-blocking) on ``run_dir/.lock``, which holds the owner's pid. The kernel drops
    the lock when the process ends, however it ends, so a crashed run never leaves a stale lock.
    Taken again by the same process, it only counts (re-entrant). On release the lock file is removed,
    and so is ``run_dir`` itself when this lock created it and nothing else was written into it. Where
    ``fcntl`` does not exist (Windows) the lock records the pid but does not exclude.
    """

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self._fd = None
        self._key = None
        self._created = False

    def acquire(self) -> "RunLock":
        key = os.path.realpath(self.run_dir)
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
            self._key = key
            return self
        path = self.run_dir / LOCK
        try:
            self._created = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    _flock(fd, path)
                    # the file locked must still be the one at `path` (a releasing owner unlinks it)
                    if os.path.samestat(os.fstat(fd), os.stat(path)):
                        break
                except FileNotFoundError:
                    pass
                except BaseException:
                    os.close(fd)
                    raise
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except RunDirLocked:
            self._remove_created()
            raise
        except OSError as exc:
            self._remove_created()
            raise ValueError(f"{self.run_dir}: cannot write the run directory ({exc.strerror or exc})") from None
        self._fd, self._key = fd, key
        _HELD[key] = [self, 1]
        return self

    def release(self) -> None:
        key, self._key = self._key, None
        held = _HELD.get(key) if key is not None else None
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[key]
        owner = held[0]
        try:
            os.unlink(owner.run_dir / LOCK)  # while still locked: an opener waiting on it sees it go and retries
        except OSError:
            pass
        os.close(owner._fd)
        owner._fd = None
        owner._remove_created()

    def _remove_created(self) -> None:
        if self._created:
            try:
                self.run_dir.rmdir()  # only if empty
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _flock(fd: int, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # no flock on this platform: the lock file records the pid only
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        try:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        except OSError:
            pid = "unknown"
        raise RunDirLocked(f"{path.parent}: in use by another process (pid {pid}); wait for it to end "
                           "or choose another directory") from None


def lock_run_dir(run_dir) -> RunLock:
    """``RunLock(run_dir).acquire()``; the caller releases it (or the process ends)."""
    return RunLock(run_dir).acquire()


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False, default=_json_default) + "\n").encode("utf-8")


def _check_arrays(what: str, arrays: Mapping) -> dict:
    out = {}
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.hasobject:
            raise ValueError(f"{what}: {name!r} has dtype object; checkpoints hold numeric arrays only")
        out[str(name)] = arr
    return out


def _check_params(where, mcfg: ModelConfig, params: Mapping) -> dict:
    """``params`` against the names, shapes and dtype that ``mcfg`` implies -> the params in the
    model's order. CheckpointError starting with ``where`` (a file, or an argument's name) otherwise."""
    shapes = expected_param_shapes(mcfg)
    for name, shape in shapes.items():
        if name not in params:
            raise CheckpointError(f"{where}: missing tensor {name!r} that config.json's model needs")
        arr = params[name]
        if arr.shape != shape:
            raise CheckpointError(f"{where}: tensor {name!r} has shape {arr.shape}, config.json implies {shape}")
        if arr.dtype != np.dtype(mcfg.dtype):
            raise CheckpointError(f"{where}: tensor {name!r} has dtype {arr.dtype}, config.json says {mcfg.dtype}")
    for name in params:
        if name not in shapes:
            raise CheckpointError(f"{where}: unexpected tensor {name!r} (not in config.json's model)")
    return {name: params[name] for name in shapes}  # the model's order


def _check_opt_state(where, opt_state: Mapping, params: Mapping) -> None:
    """Optimizer tensors: an integer scalar "step", and "<kind>/<param>" tensors of their parameter's shape."""
    for key, arr in opt_state.items():
        if key == "step":
            if arr.shape != () or not np.issubdtype(arr.dtype, np.integer):
                raise CheckpointError(f"{where}: 'step' must be an integer scalar, got shape {arr.shape} dtype {arr.dtype}")
            continue
        _, _, pname = key.partition("/")
        if pname not in params:
            raise CheckpointError(f"{where}: tensor {key!r} belongs to no parameter")
        if arr.shape != params[pname].shape:
            raise CheckpointError(f"{where}: tensor {key!r} has shape {arr.shape}, parameter has {params[pname].shape}")


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An uncompressed .npz (what np.savez writes), never pickling: one .npy member per array."""
    with open(path, "wb") as f:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _replace_latest(run_dir: Path, final: Path) -> None:
    atomic_write_text(run_dir / LATEST, final.relative_to(run_dir).as_posix() + "\n")


def _mkdtemp(prefix: str, root: Path) -> Path:
    """A new folder ``root / <prefix><random>`` with a normal folder's mode (mkdtemp makes it private,
    0700). Spelled under ``root`` as given: mkdtemp returns an absolute path from CPython 3.12 on, even
    for a relative ``root``, and `latest` is written relative to the run directory."""
    path = root / Path(tempfile.mkdtemp(prefix=prefix, dir=root)).name
    os.chmod(path, _DIR_MODE)
    return path


def _retire(path: Path) -> None:
    """Remove a checkpoint folder so that no reader finds it half deleted under its own name: one
    rename out of the way (atomic), then the deletion."""
    dest = path.parent / f"{_RETIRED_PREFIX}{path.name}-{secrets.token_hex(4)}"
    try:
        os.replace(path, dest)
    except FileNotFoundError:
        return
    shutil.rmtree(dest, ignore_errors=True)


def _pin(final: Path, root: Path) -> Path:
    """A copy of the complete checkpoint ``final`` under a fresh name, made of hard links (a real copy
    where the file system has none), for ``latest`` to name while ``final`` is replaced."""
    pin = _mkdtemp(f"{_PIN_PREFIX}{final.name}-", root)
    for f in final.iterdir():
        try:
            os.link(f, pin / f.name)
        except OSError:
            shutil.copyfile(f, pin / f.name)
            with open(pin / f.name, "rb") as g:
                os.fsync(g.fileno())
    _fsync_dir(pin)
    return pin


# ---------------------------------------------------------------------------------------------------
# save

def save_checkpoint(run_dir, step: int, params: Mapping[str, np.ndarray], opt_state: Mapping[str, np.ndarray],
                    model_cfg: Mapping, train_cfg: Optional[Mapping] = None, tokenizer_dict: Optional[Mapping] = None,
                    trainer_state: Optional[Mapping] = None, keep: Optional[int] = 2) -> Path:
    """Write ``run_dir/checkpoints/step_{step:06d}/`` atomically, point ``run_dir/latest`` at it, then
    retire older checkpoints so that ``keep`` remain (None keeps all). Returns the checkpoint folder.

    The parameters and optimizer tensors are checked against ``model_cfg`` before anything is written.
    Single writer per run directory (see ``RunLock``): leftover temporary folders of crashed saves are
    deleted.
    """
    if not is_int(step) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    step = int(step)
    if keep is not None and (not is_int(keep) or keep < 1):
        raise ValueError(f"keep must be None or a positive integer, got {keep!r}")
    params = _check_arrays("params", params)
    opt_state = _check_arrays("opt_state", opt_state)
    model_cfg = dict(model_cfg)
    mcfg = ModelConfig.from_dict(model_cfg)  # validate before writing anything
    params = _check_params("params", mcfg, params)
    _check_opt_state("opt_state", opt_state, params)
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)

    tmp = _mkdtemp(f"{_TMP_PREFIX}{checkpoint_name(step)}-", root)
    final = root / checkpoint_name(step)
    retired = None
    try:
        _write_npz(tmp / "params.npz", params)
        _write_npz(tmp / "optim.npz", opt_state)
        _write_bytes(tmp / "config.json", _dumps({"model": model_cfg,
                                                   "train": None if train_cfg is None else dict(train_cfg)}))
        if tokenizer_dict is not None:
            _write_bytes(tmp / "tokenizer.json", _dumps(dict(tokenizer_dict)))
        _write_bytes(tmp / "trainer.json", _dumps({"step": step, "state": dict(trainer_state or {})}))
        names = [n for n in _REQUIRED + _OPTIONAL if (tmp / n).exists()]
        manifest = {"format": FORMAT, "version": VERSION, "step": step,
                    "files": {n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)} for n in names}}
        _write_bytes(tmp / "manifest.json", _dumps(manifest))
        _fsync_dir(tmp)

        if final.exists():
            # Re-saving a step (os.replace cannot overwrite a non-empty folder): `latest` first names a
            # hard-linked copy of the old folder, so that it never names a folder that is missing.
            _replace_latest(run_dir, _pin(final, root))
            retired = root / f"{_RETIRED_PREFIX}{final.name}-{secrets.token_hex(4)}"
            os.replace(final, retired)
        os.replace(tmp, final)                      # the checkpoint appears complete, all at once
    except BaseException:
        if retired is not None and retired.exists() and not final.exists():
            os.replace(retired, final)              # put the old one back (`latest` names its pin meanwhile)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    _replace_latest(run_dir, final)                 # then `latest` names it (atomically)

    # Only now remove what is no longer needed: older checkpoints beyond `keep`, stale temp folders.
    if keep is not None:
        others = [p for p in list_checkpoints(run_dir) if p != final]
        for p in others[: max(0, len(others) - (keep - 1))]:
            _retire(p)
    for p in root.iterdir():
        if _is_leftover(p.name):
            shutil.rmtree(p, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------------
# load

def resolve_checkpoint_dir(path) -> Path:
    """A checkpoint folder, or a run folder whose ``latest`` file names one -> the checkpoint folder.

    ``latest`` must name a folder directly inside ``run_dir/checkpoints/`` that is not a symlink. A run
    folder without ``latest`` (a save stopped after its rename) gives its newest complete checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or checkpoint directory")
    if path.is_file():
        raise CheckpointError(f"{path}: expected a run directory or a checkpoint directory, got a file")
    if (path / "manifest.json").exists():
        return path
    latest = path / LATEST
    root = path / CHECKPOINTS
    if latest.is_symlink():
        raise CheckpointError(f"{latest}: is a symlink; a run's '{LATEST}' must be a plain file")
    if latest.is_file():
        name = latest.read_text(encoding="utf-8", errors="replace").strip()
        target = path / name
        if not _LATEST_NAME.match(name):
            raise CheckpointError(f"{latest}: names {name!r}, which is not a folder directly inside {root}")
        inside = (not root.is_symlink() and not target.is_symlink()
                  and Path(os.path.realpath(target)).parent == Path(os.path.realpath(root))
                  and Path(os.path.realpath(root)).parent == Path(os.path.realpath(path)))
        if not inside or not target.is_dir():
            raise CheckpointError(f"{latest}: names {name!r}, which is not a checkpoint directory inside {root}")
        return target
    if root.is_dir() and not root.is_symlink():
        found = list_checkpoints(path)
        if found:
            return found[-1]  # a save renamed its folder but was stopped before it wrote `latest`
        raise CheckpointError(f"{path}: run directory has no '{LATEST}' file (no complete checkpoint)")
    raise CheckpointError(f"{path}: neither a run directory ('{LATEST}') nor a checkpoint directory (manifest.json)")


class _Vanished(Exception):
    """The checkpoint folder disappeared before its files were opened (retired by a concurrent save)."""


def _open(ckpt: Path, name: str, opened: dict) -> None:
    try:
        opened[name] = open(ckpt / name, "rb")
    except FileNotFoundError:
        if not ckpt.exists():
            raise _Vanished(str(ckpt)) from None
    except IsADirectoryError:
        pass  # reported as missing by _read_verified


def _open_all(ckpt: Path, files: Mapping, opened: dict, names=_REQUIRED + _OPTIONAL) -> None:
    """Open every file the manifest lists before any is read: a file that is open can be read to the
    end even when a concurrent save retires (renames and deletes) its folder meanwhile."""
    for name in names:
        if name in files and name not in opened:
            _open(ckpt, name, opened)


def _read_verified(opened: Mapping, ckpt: Path, name: str, files: Mapping) -> bytes:
    """The bytes of one listed file, after checking its size (before reading it) and its sha256
    against the manifest."""
    path = ckpt / name
    if name not in files:
        raise CheckpointError(f"{ckpt / 'manifest.json'}: does not list {name}")
    f = opened.get(name)
    if f is None:
        raise CheckpointError(f"{path}: missing")
    entry = files[name]
    try:
        size, digest = int(entry["bytes"]), str(entry["sha256"])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise CheckpointError(f"{ckpt / 'manifest.json'}: malformed entry for {name}") from None
    actual = os.fstat(f.fileno()).st_size
    if actual < size:
        raise CheckpointError(f"{path}: truncated ({actual} of {size} bytes)")
    if actual != size:
        raise CheckpointError(f"{path}: {actual} bytes, manifest.json says {size}")
    data = f.read(size + 1)
    if len(data) != size:
        raise CheckpointError(f"{path}: changed while it was read ({len(data)} bytes, manifest.json says {size})")
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (sha256 differs from manifest.json; file corrupted)")
    return data


def _parse_json(path: Path, data: bytes):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply)") from None


def _parse_npz(path: Path, data: bytes) -> dict:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # BadZipFile, ValueError (pickled/object arrays), EOFError, OSError, ...
        raise CheckpointError(f"{path}: truncated or not a valid .npz file ({type(exc).__name__})") from None


def load_checkpoint(path_or_run_dir) -> Checkpoint:
    """Load and verify a checkpoint (a checkpoint folder, or a run folder: follows ``latest``).

    Raises CheckpointError (one line naming the file) for a missing, truncated or corrupted file, or
    for parameters whose names, shapes or dtype disagree with config.json's model configuration. A run
    folder's checkpoint that a concurrent save retired before its files were opened is retried once
    through ``latest``.
    """
    for attempt in (0, 1):
        ckpt = resolve_checkpoint_dir(path_or_run_dir)
        opened: dict = {}
        try:
            return _load_dir(ckpt, opened)
        except _Vanished:
            if attempt or ckpt == Path(path_or_run_dir):
                raise CheckpointError(f"{ckpt}: removed while it was being read (retired by a newer save)") from None
        finally:
            for f in opened.values():
                f.close()
    raise AssertionError("unreachable")


def _load_dir(ckpt: Path, opened: dict) -> Checkpoint:
    mpath = ckpt / "manifest.json"
    _open(ckpt, "manifest.json", opened)
    if "manifest.json" not in opened:
        raise CheckpointError(f"{mpath}: missing")
    manifest = _parse_json(mpath, opened["manifest.json"].read())
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{mpath}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{mpath}: format version {manifest.get('version')!r}, this code reads {VERSION}")
    files = manifest["files"]
    step = manifest.get("step")
    if not is_int(step) or step < 0:
        raise CheckpointError(f"{mpath}: step must be a non-negative integer, got {step!r}")
    _open_all(ckpt, files, opened)

    # configuration first: it says what the arrays must look like
    cpath = ckpt / "config.json"
    config = _parse_json(cpath, _read_verified(opened, ckpt, "config.json", files))
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{cpath}: no 'model' configuration")
    try:
        mcfg = ModelConfig.from_dict(config["model"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{cpath}: invalid model configuration ({exc})") from None
    train_cfg = config.get("train")
    if train_cfg is not None:
        try:
            TrainConfig.from_dict(train_cfg)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{cpath}: invalid train configuration ({exc})") from None
    from .activations import check_memory, loading_bytes, param_count  # closed form: no shapes built yet
    check_memory(loading_bytes(mcfg, (train_cfg or {}).get("optimizer", "adamw")),
                 f"{cpath}: loading a model of {param_count(mcfg):,} parameters")

    ppath = ckpt / "params.npz"
    params = _parse_npz(ppath, _read_verified(opened, ckpt, "params.npz", files))
    params = _check_params(ppath, mcfg, params)

    opath = ckpt / "optim.npz"
    opt_state = _parse_npz(opath, _read_verified(opened, ckpt, "optim.npz", files))
    _check_opt_state(opath, opt_state, params)

    tpath = ckpt / "trainer.json"
    trainer = _parse_json(tpath, _read_verified(opened, ckpt, "trainer.json", files))
    if not isinstance(trainer, dict) or not isinstance(trainer.get("state"), dict):
        raise CheckpointError(f"{tpath}: no 'state' object")
    if isinstance(trainer.get("step"), bool) or trainer.get("step") != step:
        raise CheckpointError(f"{tpath}: step {trainer.get('step')!r} disagrees with manifest.json's step {step!r}")
    sstep = trainer["state"].get("step", step)
    if isinstance(sstep, bool) or sstep != step:
        raise CheckpointError(f"{tpath}: the trainer state's step {sstep!r} disagrees with manifest.json's step {step}")

    tokenizer = _read_tokenizer(ckpt, opened, files, mcfg)
    return Checkpoint(step=int(step), params=params, opt_state=opt_state, model_cfg=config["model"],
                      train_cfg=train_cfg, tokenizer=tokenizer, trainer_state=trainer["state"], path=ckpt)


def _read_tokenizer(ckpt: Path, opened: Mapping, files: Mapping, mcfg: ModelConfig) -> Optional[dict]:
    """tokenizer.json's dict (None when the manifest lists none), checked to build a tokenizer that
    fits the model's vocabulary."""
    if "tokenizer.json" not in files:
        return None
    kpath = ckpt / "tokenizer.json"
    tokenizer = _parse_json(kpath, _read_verified(opened, ckpt, "tokenizer.json", files))
    from .tokenizer import tokenizer_from_dict

    try:
        tok = tokenizer_from_dict(tokenizer)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{kpath}: not a valid tokenizer ({exc})") from None
    if tok.vocab_size > mcfg.vocab_size:
        raise CheckpointError(
            f"{kpath}: {tok.vocab_size} tokens, more than config.json's vocab_size {mcfg.vocab_size}")
    return tokenizer


# ---------------------------------------------------------------------------------------------------
# weights: a trained model to ship or share, without optimizer or trainer state
#
#   folder/
#     params.npz       the parameters, stored in float16, float32 or float64 (``dtype``)
#     config.json      {"model": ModelConfig.to_dict(), "train": TrainConfig.to_dict() | null}
#     tokenizer.json   tokenizer.to_dict() (absent when none was given)
#     record.json      how the weights were made and what they measured (free-form JSON object)
#     manifest.json    {"format": "cllm-weights", "version", "dtype", "files": {name: {"bytes", "sha256"}}}
#
# Written into a temporary sibling folder and renamed into place, so a folder of weights appears
# complete or not at all; read with the same size, checksum and shape checks as a checkpoint.

WEIGHTS_FORMAT = "cllm-weights"
_WEIGHTS_FILES = ("params.npz", "config.json", "tokenizer.json", "record.json")
_WEIGHT_DTYPES = ("float16", "float32", "float64")


@dataclass
class Weights:
    """What ``load_weights`` read back: the parameters in the model's dtype (``stored_dtype`` is how
    they were stored), the configurations and tokenizer as plain dicts, and the record."""

    params: dict
    model_cfg: dict
    train_cfg: Optional[dict]
    tokenizer: Optional[dict]
    record: dict
    stored_dtype: str
    path: Optional[Path] = field(default=None, compare=False)


def save_weights(folder, params: Mapping[str, np.ndarray], model_cfg: Mapping, train_cfg: Optional[Mapping] = None,
                 tokenizer_dict: Optional[Mapping] = None, record: Optional[Mapping] = None,
                 dtype: str = "float16") -> Path:
    """Write the parameters (rounded to ``dtype``), configurations, tokenizer and ``record`` to a new
    ``folder`` (which must not exist yet), atomically. Returns the folder."""
    if dtype not in _WEIGHT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_WEIGHT_DTYPES)}, got {dtype!r}")
    model_cfg = dict(model_cfg)
    mcfg = ModelConfig.from_dict(model_cfg)
    params = _check_params("params", mcfg, _check_arrays("params", params))
    stored = {}
    for name, arr in params.items():
        with np.errstate(over="ignore"):
            low = arr.astype(dtype)
        if not np.all(np.isfinite(low)):
            raise ValueError(f"params: {name!r} does not fit in {dtype} (overflows to inf or is not finite)")
        stored[name] = low
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder}: already exists; weights are written to a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _mkdtemp(f"{_TMP_PREFIX}{folder.name}-", folder.parent)
    try:
        _write_npz(tmp / "params.npz", stored)
        _write_bytes(tmp / "config.json", _dumps({"model": model_cfg,
                                                   "train": None if train_cfg is None else dict(train_cfg)}))
        if tokenizer_dict is not None:
            _write_bytes(tmp / "tokenizer.json", _dumps(dict(tokenizer_dict)))
        _write_bytes(tmp / "record.json", _dumps(dict(record or {})))
        names = [n for n in _WEIGHTS_FILES if (tmp / n).exists()]
        manifest = {"format": WEIGHTS_FORMAT, "version": VERSION, "dtype": dtype,
                    "files": {n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)} for n in names}}
        _write_bytes(tmp / "manifest.json", _dumps(manifest))
        _fsync_dir(tmp)
        os.rename(tmp, folder)  # fails, leaving nothing, if the folder appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(folder.parent)
    return folder


def is_weights_folder(path) -> bool:
    """True when ``path`` is a folder whose manifest.json says it holds weights (not a checkpoint)."""
    try:
        with open(Path(path) / "manifest.json", "rb") as f:
            manifest = json.loads(f.read(1 << 16).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == WEIGHTS_FORMAT


def load_weights(folder) -> Weights:
    """Load and verify a folder written by :func:`save_weights`; the parameters come back in the
    configuration's dtype. CheckpointError (one line naming the file) for anything missing or wrong."""
    folder = Path(folder)
    mpath = folder / "manifest.json"
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder of weights")
    opened: dict = {}
    try:
        _open(folder, "manifest.json", opened)
        if "manifest.json" not in opened:
            raise CheckpointError(f"{mpath}: missing")
        manifest = _parse_json(mpath, opened["manifest.json"].read())
        if not isinstance(manifest, dict) or manifest.get("format") != WEIGHTS_FORMAT \
                or not isinstance(manifest.get("files"), dict):
            raise CheckpointError(f"{mpath}: not a {WEIGHTS_FORMAT} manifest")
        if manifest.get("version") != VERSION:
            raise CheckpointError(f"{mpath}: format version {manifest.get('version')!r}, this code reads {VERSION}")
        stored_dtype = manifest.get("dtype")
        if stored_dtype not in _WEIGHT_DTYPES:
            raise CheckpointError(f"{mpath}: dtype must be one of {', '.join(_WEIGHT_DTYPES)}, got {stored_dtype!r}")
        files = manifest["files"]
        _open_all(folder, files, opened, _WEIGHTS_FILES)

        cpath = folder / "config.json"
        config = _parse_json(cpath, _read_verified(opened, folder, "config.json", files))
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            raise CheckpointError(f"{cpath}: no 'model' configuration")
        try:
            mcfg = ModelConfig.from_dict(config["model"])
            if config.get("train") is not None:
                TrainConfig.from_dict(config["train"])
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{cpath}: invalid configuration ({exc})") from None
        from .activations import check_memory, param_count

        check_memory(param_count(mcfg) * (np.dtype(mcfg.dtype).itemsize + np.dtype(stored_dtype).itemsize),
                     f"{cpath}: loading a model of {param_count(mcfg):,} parameters")

        ppath = folder / "params.npz"
        raw = _parse_npz(ppath, _read_verified(opened, folder, "params.npz", files))
        for name, arr in raw.items():
            if arr.dtype != np.dtype(stored_dtype):
                raise CheckpointError(f"{ppath}: tensor {name!r} has dtype {arr.dtype}, manifest.json says {stored_dtype}")
        params = _check_params(ppath, mcfg, {k: v.astype(mcfg.dtype) for k, v in raw.items()})

        rpath = folder / "record.json"
        record = _parse_json(rpath, _read_verified(opened, folder, "record.json", files))
        if not isinstance(record, dict):
            raise CheckpointError(f"{rpath}: not a JSON object")
        tokenizer = _read_tokenizer(folder, opened, files, mcfg)
    finally:
        for f in opened.values():
            f.close()
    return Weights(params=params, model_cfg=config["model"], train_cfg=config.get("train"), tokenizer=tokenizer,
                   record=record, stored_dtype=stored_dtype, path=folder)
