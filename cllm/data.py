"""Text sources, train/validation split and batch sampling.

The pieces, in the order a training run uses them::

    text = builtin_corpus()                     # or load_text("my.txt") / load_text("folder/")
    ids = tok.encode(text)                      # (N,) int64
    train, val = split(ids, val_frac=0.1)       # first 90% / last 10%
    x, y = get_batch(train, 12, 64, rng)        # (B, T) random windows, y = x shifted by one
    for x, y in epoch_batches(train, 4, 32, rng): ...     # one pass, non-overlapping windows
    for x, y in eval_batches(val, 64, 32): ...  # every window of the split, for a full-split loss

A window of ``seq_len`` T needs T + 1 tokens: inputs ``data[i : i+T]`` and targets
``data[i+1 : i+T+1]``. Non-overlapping windows start at 0, T, 2T, ... so a split of N tokens holds
``(N - 1) // T`` of them; the last ``(N - 1) % T`` targets (fewer than T) fall outside every window.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from ._validate import check_int

Array = np.ndarray


CORPUS_FILE = "corpus/pydoc_topics.json.gz"  # inside the package; its README says where it comes from
CORPUS_SHA256 = "71f2ff5d99bdc1f9c48c5c2353ad138201c5ca1c377e0226857ef8fa89b8bcee"  # of the joined UTF-8 text
CORPUS_NAME = "built-in corpus (CPython 3.11 help topics)"


def builtin_topics() -> dict:
    """CPython 3.11.7's help topics (``pydoc_data.topics``): topic name -> text, from the snapshot
    shipped with the package (``cllm/corpus/``, PSF licence), so every Python reads the same text."""
    import gzip
    import json
    from importlib.resources import files

    raw = gzip.decompress(files("cllm").joinpath(CORPUS_FILE).read_bytes())
    return json.loads(raw.decode("utf-8"))


def builtin_corpus() -> str:
    """The built-in training text: the help topics of :func:`builtin_topics` joined in sorted key
    order with blank lines. 465,126 characters, 103 distinct, on every supported Python (each
    CPython's own ``pydoc_data.topics`` differs: 459,073 characters on 3.10, 510,742 on 3.13, which is
    why a fixed snapshot is shipped instead of reading the running interpreter's)."""
    topics = builtin_topics()
    return "\n\n".join(topics[k] for k in sorted(topics))


def _read_utf8(path: Path) -> str:
    """One file -> str; ValueError naming the file if it is binary or not UTF-8."""
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise ValueError(f"{path}: looks like a binary file (contains NUL bytes); expected UTF-8 text")
    try:
        return raw.decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); expected UTF-8 text"
        ) from None


# Reading, decoding and tokenising a text takes about this many bytes of memory per byte of file at its
# peak (measured with tracemalloc: 23 for the character tokenizer, 17 for the word tokenizer).
TEXT_BYTES_PER_BYTE = 24


def _check_text_size(path: Path, size: int) -> None:
    from .activations import check_memory

    check_memory(size * TEXT_BYTES_PER_BYTE, f"{path}: {size:,} bytes of text to read and tokenise")


def load_text(path) -> str:
    """Read a UTF-8 text file, or every ``.txt`` file under a folder (recursive, sorted by relative
    path, joined with a blank line; empty files are skipped).

    Raises FileNotFoundError for a missing path, ValueError for an empty file, a folder without text,
    a binary / non-UTF-8 file, or a path that is neither a regular file nor a folder (a device such as
    /dev/zero or a FIFO would never end); ``activations.NotEnoughMemory`` for text whose reading and
    tokenising (``TEXT_BYTES_PER_BYTE`` per byte) would not fit in the available memory. Each message
    is one line naming the path.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if not path.is_dir() and not path.is_file():  # a device (/dev/zero), a FIFO or a socket never ends
        raise ValueError(f"{path}: not a regular file or folder; expected a UTF-8 text file or a folder of .txt files")
    if path.is_dir():
        files = sorted((p for p in path.rglob("*.txt") if p.is_file()),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise ValueError(f"{path}: folder holds no .txt files")
        _check_text_size(path, sum(p.stat().st_size for p in files))
        texts = [t for t in (_read_utf8(p) for p in files) if t.strip()]
        if not texts:
            raise ValueError(f"{path}: folder's .txt files hold no text (all empty)")
        return "\n\n".join(texts)
    _check_text_size(path, path.stat().st_size)
    text = _read_utf8(path)
    if not text.strip():
        raise ValueError(f"{path}: file is empty (no text)")
    return text


def split(ids_or_text: Union[Array, str], val_frac: float = 0.1):
    """-> (train, val): the first ``int(n * (1 - val_frac))`` items and the rest (nanoGPT's rule).

    Works on token arrays and on strings (slices, no copies for arrays).
    """
    if not (0.0 <= val_frac < 1.0):
        raise ValueError(f"val_frac must be in [0, 1), got {val_frac!r}")
    n = len(ids_or_text)
    cut = int(n * (1.0 - val_frac))
    return ids_or_text[:cut], ids_or_text[cut:]


def _check_data(data, seq_len: int, what: str = "data") -> Array:
    data = np.asarray(data)
    if data.ndim != 1 or not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"{what} must be a 1-D array of token ids, got shape {data.shape} dtype {data.dtype}")
    check_int("seq_len", seq_len, 1)
    if len(data) < seq_len + 1:
        raise ValueError(
            f"{what} has {len(data)} tokens; one window of seq_len={seq_len} needs at least {seq_len + 1} "
            f"(inputs plus the next-token target)"
        )
    return data


def _check_batch_size(batch_size) -> None:
    check_int("batch_size", batch_size, 1)


def get_batch(data: Array, batch_size: int, seq_len: int, rng: np.random.Generator):
    """B random contiguous windows -> (x, y), both int64 (B, T), ``y[:, t] == x[:, t+1]`` shifted.

    Start offsets are uniform on ``[0, N - T)``, as in nanoGPT, so every window fits with its targets.
    """
    data = _check_data(data, seq_len)
    _check_batch_size(batch_size)
    starts = rng.integers(0, len(data) - seq_len, size=batch_size)          # (B,)
    idx = starts[:, None] + np.arange(seq_len + 1)                           # (B, T+1)
    chunk = data[idx].astype(np.int64, copy=False)                           # (B, T+1) gather
    return np.ascontiguousarray(chunk[:, :-1]), np.ascontiguousarray(chunk[:, 1:])  # (B, T), (B, T)


def num_windows(n_tokens: int, seq_len: int) -> int:
    """Number of non-overlapping windows of ``seq_len`` in ``n_tokens`` tokens: ``(n - 1) // T``."""
    return max(0, (n_tokens - 1) // seq_len)


def batches_per_epoch(n_tokens: int, batch_size: int, seq_len: int, drop_last: bool = True) -> int:
    """How many batches ``epoch_batches`` yields (1241 tokens, B=4, T=32 -> 38 windows -> 9)."""
    w = num_windows(n_tokens, seq_len)
    return w // batch_size if drop_last else -(-w // batch_size)


def eval_windows(data: Array, seq_len: int):
    """All non-overlapping windows of the split -> (x, y), int64 (W, T) with W = (N - 1) // T.

    Window w covers inputs ``data[wT : wT+T]`` and targets ``data[wT+1 : wT+T+1]``; together they
    score every target except the last ``(N - 1) % T`` (fewer than T), each exactly once.
    """
    data = _check_data(data, seq_len)
    w = num_windows(len(data), seq_len)
    x = data[: w * seq_len].astype(np.int64).reshape(w, seq_len)           # (W, T)
    y = data[1: w * seq_len + 1].astype(np.int64).reshape(w, seq_len)      # (W, T)
    return x, y


def eval_batches(data: Array, seq_len: int, batch_size: int) -> Iterator[tuple]:
    """``eval_windows`` in order, ``batch_size`` windows at a time; the last batch may be smaller.

    For the mean loss over the split, weight each batch's mean loss by its number of windows.
    """
    _check_batch_size(batch_size)
    x, y = eval_windows(data, seq_len)                                        # (W, T), (W, T)
    for i in range(0, len(x), batch_size):
        yield x[i: i + batch_size], y[i: i + batch_size]                     # (<=B, T) each


def epoch_batches(data: Array, batch_size: int, seq_len: int, rng: Optional[np.random.Generator] = None,
                  drop_last: bool = True) -> Iterator[tuple]:
    """One epoch: the non-overlapping windows of ``data``, ``batch_size`` at a time -> (x, y) (B, T).

    The windows are those of ``eval_windows``; with ``rng`` their order is shuffled (a fresh
    permutation per call, so per epoch), otherwise they come in text order. Remainder: with
    ``drop_last=True`` (default, as in the original project: 1241 tokens in batches of 4 x 32 give
    38 windows -> 9 full batches) the ``W % B`` windows left over are skipped for this epoch (with
    shuffling, different ones each epoch); with ``drop_last=False`` they form a smaller last batch.
    """
    _check_batch_size(batch_size)
    x, y = eval_windows(data, seq_len)                                        # (W, T), (W, T)
    order = np.arange(len(x)) if rng is None else rng.permutation(len(x))    # (W,)
    n_batches = batches_per_epoch(len(data), batch_size, seq_len, drop_last)
    if n_batches == 0:
        raise ValueError(
            f"data has {len(data)} tokens, {len(x)} window(s) of seq_len={seq_len}: fewer than one batch of "
            f"{batch_size}; a full batch needs at least {batch_size * seq_len + 1} tokens"
        )
    for b in range(n_batches):
        sel = order[b * batch_size: (b + 1) * batch_size]                    # (B,) window indices
        yield x[sel], y[sel]                                                  # (B, T), (B, T)
