"""Checkpoints: save and load a training run without pickle, with atomic writes and checksums.

Layout of a run directory::

    run_dir/
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
``latest`` replaced (temp file + ``os.replace``). Old checkpoints beyond ``keep`` are removed last. A
crash (even SIGKILL) at any point leaves ``latest`` naming a complete, verified checkpoint: either the
previous one or the new one. Leftover ``.tmp-*`` folders are removed by the next save.

Loading verifies every file against the manifest (size, sha256), loads arrays with
``allow_pickle=False``, and checks the parameters against the shapes and dtype that config.json's
``ModelConfig`` implies. Anything wrong raises ``CheckpointError`` (a ValueError) with one line that
names the file and the problem.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from ._atomic import _fsync_dir, atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported)
from .config import ModelConfig, TrainConfig

FORMAT = "cllm-checkpoint"
VERSION = 1
LATEST = "latest"
CHECKPOINTS = "checkpoints"
_TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^step_(\d+)$")
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


def generator_from_state(state: Mapping) -> np.random.Generator:
    """Rebuild a ``np.random.Generator`` from ``rng.bit_generator.state`` (as stored in trainer.json)."""
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = dict(state)
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


# ---------------------------------------------------------------------------------------------------
# save

def save_checkpoint(run_dir, step: int, params: Mapping[str, np.ndarray], opt_state: Mapping[str, np.ndarray],
                    model_cfg: Mapping, train_cfg: Optional[Mapping] = None, tokenizer_dict: Optional[Mapping] = None,
                    trainer_state: Optional[Mapping] = None, keep: Optional[int] = 2) -> Path:
    """Write ``run_dir/checkpoints/step_{step:06d}/`` atomically, point ``run_dir/latest`` at it, then
    delete older checkpoints so that ``keep`` remain (None keeps all). Returns the checkpoint folder.

    Single writer per run directory: leftover temporary folders of crashed saves are deleted.
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    step = int(step)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be None or a positive integer, got {keep!r}")
    params = _check_arrays("params", params)
    opt_state = _check_arrays("opt_state", opt_state)
    model_cfg = dict(model_cfg)
    ModelConfig.from_dict(model_cfg)  # validate before writing anything
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{checkpoint_name(step)}-", dir=root))
    final = aside = None
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

        final = root / checkpoint_name(step)
        if final.exists():
            # Re-saving a step: move the old folder aside first (os.replace cannot overwrite a
            # non-empty folder). Between these two renames `latest` may name a missing folder.
            aside = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}old-", dir=root)) / final.name
            os.replace(final, aside)
        os.replace(tmp, final)                      # the checkpoint appears complete, all at once
    except BaseException:
        if aside is not None and aside.exists() and final is not None and not final.exists():
            os.replace(aside, final)                # put the old one back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    _replace_latest(run_dir, final)                 # then `latest` names it (atomically)

    # Only now delete what is no longer needed: older checkpoints beyond `keep`, stale temp folders.
    if keep is not None:
        others = [p for p in list_checkpoints(run_dir) if p != final]
        for p in others[: max(0, len(others) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.iterdir():
        if p.name.startswith(_TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------------------------
# load

def resolve_checkpoint_dir(path) -> Path:
    """A checkpoint folder, or a run folder whose ``latest`` file names one -> the checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run or checkpoint directory")
    if path.is_file():
        raise CheckpointError(f"{path}: expected a run directory or a checkpoint directory, got a file")
    if (path / "manifest.json").exists():
        return path
    latest = path / LATEST
    if latest.is_file():
        name = latest.read_text(encoding="utf-8", errors="replace").strip()
        target = path / name
        if not name or not target.is_dir():
            raise CheckpointError(f"{latest}: names {name!r}, which is not a checkpoint directory")
        return target
    if (path / CHECKPOINTS).is_dir():
        raise CheckpointError(f"{path}: run directory has no '{LATEST}' file (no complete checkpoint)")
    raise CheckpointError(f"{path}: neither a run directory ('{LATEST}') nor a checkpoint directory (manifest.json)")


def _read_verified(ckpt: Path, name: str, files: Mapping) -> bytes:
    """The bytes of one listed file, after checking its size and sha256 against the manifest."""
    path = ckpt / name
    if name not in files:
        raise CheckpointError(f"{ckpt / 'manifest.json'}: does not list {name}")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    data = path.read_bytes()
    entry = files[name]
    try:
        size, digest = int(entry["bytes"]), str(entry["sha256"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{ckpt / 'manifest.json'}: malformed entry for {name}") from None
    if len(data) < size:
        raise CheckpointError(f"{path}: truncated ({len(data)} of {size} bytes)")
    if len(data) != size:
        raise CheckpointError(f"{path}: {len(data)} bytes, manifest.json says {size}")
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (sha256 differs from manifest.json; file corrupted)")
    return data


def _parse_json(path: Path, data: bytes):
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def _parse_npz(path: Path, data: bytes) -> dict:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # BadZipFile, ValueError (pickled/object arrays), EOFError, OSError, ...
        raise CheckpointError(f"{path}: truncated or not a valid .npz file ({type(exc).__name__})") from None


def load_checkpoint(path_or_run_dir) -> Checkpoint:
    """Load and verify a checkpoint (a checkpoint folder, or a run folder: follows ``latest``).

    Raises CheckpointError (one line naming the file) for a missing, truncated or corrupted file, or
    for parameters whose names, shapes or dtype disagree with config.json's model configuration.
    """
    ckpt = resolve_checkpoint_dir(path_or_run_dir)
    mpath = ckpt / "manifest.json"
    if not mpath.is_file():
        raise CheckpointError(f"{mpath}: missing")
    manifest = _parse_json(mpath, mpath.read_bytes())
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{mpath}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{mpath}: format version {manifest.get('version')!r}, this code reads {VERSION}")
    files = manifest["files"]
    step = manifest.get("step")

    # configuration first: it says what the arrays must look like
    cpath = ckpt / "config.json"
    config = _parse_json(cpath, _read_verified(ckpt, "config.json", files))
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
    params = _parse_npz(ppath, _read_verified(ckpt, "params.npz", files))
    shapes = expected_param_shapes(mcfg)
    for name, shape in shapes.items():
        if name not in params:
            raise CheckpointError(f"{ppath}: missing tensor {name!r} that config.json's model needs")
        arr = params[name]
        if arr.shape != shape:
            raise CheckpointError(f"{ppath}: tensor {name!r} has shape {arr.shape}, config.json implies {shape}")
        if arr.dtype != np.dtype(mcfg.dtype):
            raise CheckpointError(f"{ppath}: tensor {name!r} has dtype {arr.dtype}, config.json says {mcfg.dtype}")
    for name in params:
        if name not in shapes:
            raise CheckpointError(f"{ppath}: unexpected tensor {name!r} (not in config.json's model)")
    params = {name: params[name] for name in shapes}  # the model's order

    opath = ckpt / "optim.npz"
    opt_state = _parse_npz(opath, _read_verified(ckpt, "optim.npz", files))
    for key, arr in opt_state.items():
        if key == "step":
            if arr.shape != () or not np.issubdtype(arr.dtype, np.integer):
                raise CheckpointError(f"{opath}: 'step' must be an integer scalar, got shape {arr.shape} dtype {arr.dtype}")
            continue
        _, _, pname = key.partition("/")
        if pname not in params:
            raise CheckpointError(f"{opath}: tensor {key!r} belongs to no parameter")
        if arr.shape != params[pname].shape:
            raise CheckpointError(f"{opath}: tensor {key!r} has shape {arr.shape}, parameter has {params[pname].shape}")

    tpath = ckpt / "trainer.json"
    trainer = _parse_json(tpath, _read_verified(ckpt, "trainer.json", files))
    if not isinstance(trainer, dict) or not isinstance(trainer.get("state"), dict):
        raise CheckpointError(f"{tpath}: no 'state' object")
    if trainer.get("step") != step:
        raise CheckpointError(f"{tpath}: step {trainer.get('step')!r} disagrees with manifest.json's step {step!r}")

    tokenizer = None
    if "tokenizer.json" in files:
        kpath = ckpt / "tokenizer.json"
        tokenizer = _parse_json(kpath, _read_verified(ckpt, "tokenizer.json", files))
        from .tokenizer import tokenizer_from_dict

        try:
            tok = tokenizer_from_dict(tokenizer)
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{kpath}: not a valid tokenizer ({exc})") from None
        if tok.vocab_size > mcfg.vocab_size:
            raise CheckpointError(
                f"{kpath}: {tok.vocab_size} tokens, more than config.json's vocab_size {mcfg.vocab_size}")

    return Checkpoint(step=int(step), params=params, opt_state=opt_state, model_cfg=config["model"],
                      train_cfg=train_cfg, tokenizer=tokenizer, trainer_state=trainer["state"], path=ckpt)
