"""Character and word tokenizers with a common interface and JSON save/load.

Both tokenizers turn a string into a 1-D ``int64`` array of token ids and back::

    tok = CharTokenizer.fit(text)         # or WordTokenizer.fit(text, min_freq=2, max_vocab=5000)
    ids = tok.encode(text)                # np.ndarray[int64], shape (N,)
    assert tok.decode(ids) == text        # exact on the training text (default settings)
    tok.save("runs/x/tokenizer.json")     # atomic: temp file + os.replace
    tok = load_tokenizer("runs/x/tokenizer.json")

``CharTokenizer``: one token per Unicode code point; the vocabulary is the set of characters of the
training text sorted by code point, so ids are reproducible from the text alone. Encoding a character
outside the vocabulary is an error (``ValueError`` naming the characters): a character model has no
sensible fallback, and silently dropping characters would change the prompt.

``WordTokenizer``: tokens are words (runs of letters and underscores), numbers (runs of digits),
single punctuation marks and runs of whitespace, so that every character of a text belongs to exactly
one token and ``decode(encode(text)) == text`` whenever all tokens are known. Id 0 is ``<unk>``; words
rarer than ``min_freq`` or beyond ``max_vocab`` map to it.

Neither encoder loops over characters or tokens in Python: the character tokenizer works on the array
of code points with ``np.searchsorted``, and the word tokenizer maps tokens through a dict in C
(``map(dict.__getitem__, ...)``).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np

from .checkpoint import atomic_write_text

UNK = "<unk>"

# word | number | one punctuation mark | whitespace run. [^\W\d] is a word character that is not a
# digit: a letter (any script) or "_", so identifiers such as __init__ stay whole. Every character is
# matched by exactly one branch, which is what makes decode(encode(text)) == text.
WORD_PATTERN = re.compile(r"[^\W\d]+|\d+|\s+|[^\w\s]")

_MAX_SHOWN = 12  # offending characters listed in an error message


def _as_ids(ids) -> np.ndarray:
    """Any 1-D sequence of integers (list, array, 0-d array) -> 1-D int64 array."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"ids must be a 1-D sequence of integers, got an array of shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_range(ids: np.ndarray, vocab_size: int) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        raise ValueError(f"token id {int(bad[0])} is outside the vocabulary (0..{vocab_size - 1})")


class _Tokenizer:
    """Shared plumbing: JSON save/load and the ``from_text`` alias."""

    kind = ""  # "char" | "word", stored as "type" in the JSON

    @classmethod
    def from_text(cls, text: str, **kwargs):
        """Alias of ``fit``."""
        return cls.fit(text, **kwargs)

    def __len__(self) -> int:
        return self.vocab_size

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.to_dict() == self.to_dict()

    def save(self, path) -> Path:
        """Write ``to_dict()`` as JSON, atomically (temp file in the same folder, then os.replace)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path):
        """Read a tokenizer saved by ``save``; ValueError naming the file if it is not one of ours."""
        tok = load_tokenizer(path)
        if not isinstance(tok, cls):
            raise ValueError(f"{path}: holds a {tok.kind} tokenizer, not a {cls.kind} tokenizer")
        return tok


class CharTokenizer(_Tokenizer):
    """One token per character; vocabulary sorted by code point.

    ``CharTokenizer(chars)`` accepts any iterable of distinct single characters and sorts them.
    """

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"a character vocabulary holds single characters, got {c!r}")
        if not chars:
            raise ValueError("a character vocabulary needs at least one character")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"duplicate characters in the vocabulary: {', '.join(map(repr, dup))}")
        self.chars: list[str] = sorted(chars)
        # code point of each id, ascending, so np.searchsorted maps code points to ids
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)  # (V,)

    @classmethod
    def fit(cls, text: str) -> "CharTokenizer":
        """Vocabulary = the distinct characters of ``text``."""
        if not isinstance(text, str) or not text:
            raise ValueError("cannot fit a tokenizer on empty text")
        return cls(set(text))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @staticmethod
    def _codepoints_of(text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # (N,) one per character

    def encode(self, text: str) -> np.ndarray:
        """text -> int64 ids, shape (len(text),). ValueError naming unknown characters."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        cps = self._codepoints_of(text)                                 # (N,)
        ids = np.searchsorted(self._codepoints, cps)                    # (N,) insertion points
        ids = np.minimum(ids, self.vocab_size - 1)
        known = self._codepoints[ids] == cps                            # (N,) bool
        if not known.all():
            bad = np.unique(cps[~known])                                # sorted by code point
            shown = ", ".join(repr(chr(c)) for c in bad[:_MAX_SHOWN])
            more = f" and {bad.size - _MAX_SHOWN} more" if bad.size > _MAX_SHOWN else ""
            raise ValueError(f"text contains characters not in the vocabulary: {shown}{more}")
        return ids.astype(np.int64)

    def decode(self, ids) -> str:
        """ids -> text; ValueError for ids outside the vocabulary."""
        ids = _as_ids(ids)
        _check_range(ids, self.vocab_size)
        return self._codepoints[ids].tobytes().decode("utf-32-le", "surrogatepass")     # (N,) code points -> str

    def to_dict(self) -> dict:
        return {"type": self.kind, "vocab": list(self.chars)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "CharTokenizer":
        _expect_type(d, cls.kind)
        return cls(d["vocab"])  # a list (checked by _expect_type) of single characters (checked here)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class _UnkIndex(dict):
    """token -> id with unknown tokens mapping to 0 (``<unk>``), usable from C via ``__getitem__``."""

    def __missing__(self, key):
        return 0


class WordTokenizer(_Tokenizer):
    """Words, numbers, punctuation marks and whitespace runs; id 0 is ``<unk>``.

    ``WordTokenizer(vocab, min_freq=1, max_vocab=None, codes=None)`` takes the full vocabulary list
    (``vocab[0]`` must be ``"<unk>"``); ``fit`` builds it from a text: tokens seen at least
    ``min_freq`` times, most frequent first, ties broken by the token string (code-point order), cut to
    ``max_vocab`` entries in total (``<unk>`` included).

    ``codes`` is an optional mapping token -> positive integer (a composite code such as
    root prime x affix prime) that the lattice components supply; it is stored in ``to_dict`` and
    otherwise unused here.
    """

    kind = "word"

    def __init__(self, vocab: Iterable[str], min_freq: int = 1, max_vocab: Optional[int] = None,
                 codes: Optional[Mapping[str, int]] = None):
        vocab = list(vocab)
        if not vocab or vocab[0] != UNK:
            raise ValueError(f"a word vocabulary starts with {UNK!r} (id 0)")
        if any(not isinstance(t, str) or not t for t in vocab):
            raise ValueError("word vocabulary entries must be non-empty strings")
        if len(set(vocab)) != len(vocab):
            raise ValueError("duplicate tokens in the word vocabulary")
        _check_fit_args(min_freq, max_vocab)
        self.vocab: list[str] = vocab
        self.min_freq = min_freq
        self.max_vocab = max_vocab
        self.codes: Optional[dict[str, int]] = None
        if codes is not None:
            self.codes = {}
            for tok, code in codes.items():
                if isinstance(code, bool) or not isinstance(code, (int, np.integer)) or code <= 0:
                    raise ValueError(f"code for {tok!r} must be a positive integer, got {code!r}")
                self.codes[str(tok)] = int(code)
        self._index = _UnkIndex((t, i) for i, t in enumerate(vocab))

    @classmethod
    def fit(cls, text: str, min_freq: int = 1, max_vocab: Optional[int] = None,
            codes: Optional[Mapping[str, int]] = None) -> "WordTokenizer":
        if not isinstance(text, str) or not text:
            raise ValueError("cannot fit a tokenizer on empty text")
        _check_fit_args(min_freq, max_vocab)
        counts = Counter(WORD_PATTERN.findall(text))
        counts.pop(UNK, None)  # cannot occur (< and > are separate tokens), kept for safety
        kept = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        if max_vocab is not None:
            kept = kept[: max_vocab - 1]  # one slot is <unk>
        return cls([UNK] + kept, min_freq=min_freq, max_vocab=max_vocab, codes=codes)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @staticmethod
    def split(text: str) -> list[str]:
        """The token strings of ``text`` (before mapping to ids)."""
        return WORD_PATTERN.findall(text)

    def encode(self, text: str) -> np.ndarray:
        """text -> int64 ids, shape (number of tokens,); unknown tokens -> 0."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        tokens = WORD_PATTERN.findall(text)
        return np.fromiter(map(self._index.__getitem__, tokens), dtype=np.int64, count=len(tokens))

    def decode(self, ids) -> str:
        """ids -> text; id 0 decodes as ``<unk>``."""
        ids = _as_ids(ids)
        _check_range(ids, self.vocab_size)
        return "".join(map(self.vocab.__getitem__, ids.tolist()))

    def to_dict(self) -> dict:
        return {"type": self.kind, "vocab": list(self.vocab), "min_freq": self.min_freq,
                "max_vocab": self.max_vocab, "codes": None if self.codes is None else dict(self.codes)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "WordTokenizer":
        _expect_type(d, cls.kind)
        codes = d.get("codes")
        if codes is not None and not isinstance(codes, Mapping):
            raise ValueError(f"codes must be an object mapping tokens to integers or null, got {type(codes).__name__}")
        return cls(d["vocab"], min_freq=d.get("min_freq", 1), max_vocab=d.get("max_vocab"), codes=codes)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, min_freq={self.min_freq}, max_vocab={self.max_vocab})"


def _check_fit_args(min_freq, max_vocab) -> None:
    if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
        raise ValueError(f"min_freq must be a positive integer, got {min_freq!r}")
    if max_vocab is not None and (isinstance(max_vocab, bool) or not isinstance(max_vocab, int) or max_vocab < 2):
        raise ValueError(f"max_vocab must be None or an integer >= 2 (<unk> plus one token), got {max_vocab!r}")


def _expect_type(d: Mapping, kind: str) -> None:
    if not isinstance(d, Mapping) or d.get("type") != kind or not isinstance(d.get("vocab"), (list, tuple)):
        raise ValueError(f"not a {kind} tokenizer dict (expected type={kind!r} and a vocab list)")


_KINDS = {"char": CharTokenizer, "word": WordTokenizer}


def tokenizer_from_dict(d: Mapping):
    """Rebuild a tokenizer of either kind from ``to_dict()`` output (dispatch on ``d["type"]``)."""
    kind = d.get("type") if isinstance(d, Mapping) else None
    if kind not in _KINDS:
        raise ValueError(f"unknown tokenizer type {kind!r} (expected 'char' or 'word')")
    return _KINDS[kind].from_dict(d)


def load_tokenizer(path):
    """Read a tokenizer JSON file of either kind; ValueError naming the file when it is malformed."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such tokenizer file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a valid tokenizer JSON file ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a valid tokenizer JSON file (nested too deeply)") from None
    try:
        return tokenizer_from_dict(d)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: not a valid tokenizer file ({exc})") from None
