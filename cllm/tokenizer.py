"""Character, word and byte-level BPE tokenizers with a common interface and JSON save/load.

All three turn a string into a 1-D ``int64`` array of token ids and back::

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

``BPETokenizer``: GPT-2's byte-level byte-pair encoding, learned here (``BPETokenizer.train(text,
vocab_size)``) or read from GPT-2's vocab.json + merges.txt; every text encodes (no unknown tokens) and
decodes back exactly. Bits per byte (``num_bytes``) make its losses comparable with the others'.

Neither the character nor the word encoder loops over characters or tokens in Python: the character
tokenizer works on the array of code points with ``np.searchsorted``, and the word tokenizer maps
tokens through a dict in C (``map(dict.__getitem__, ...)``). The BPE encoder runs its merge loop once
per distinct pre-token and caches the result.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from itertools import accumulate, repeat
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np

from ._atomic import atomic_write_text
from ._validate import is_int

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

    kind = ""  # "char" | "word" | "bpe", stored as "type" in the JSON

    @classmethod
    def from_text(cls, text: str, **kwargs):
        """Alias of ``fit``."""
        return cls.fit(text, **kwargs)

    def __len__(self) -> int:
        return self.vocab_size

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.to_dict() == self.to_dict()

    def num_bytes(self, ids) -> int:
        """UTF-8 bytes of the text that ``ids`` decode to (the denominator of bits per byte)."""
        return len(self.decode(ids).encode("utf-8"))

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
                if not is_int(code) or code <= 0:
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
    if not is_int(min_freq) or min_freq < 1:
        raise ValueError(f"min_freq must be a positive integer, got {min_freq!r}")
    if max_vocab is not None and (not is_int(max_vocab) or max_vocab < 2):
        raise ValueError(f"max_vocab must be None or an integer >= 2 (<unk> plus one token), got {max_vocab!r}")


def _expect_type(d: Mapping, kind: str) -> None:
    if not isinstance(d, Mapping) or d.get("type") != kind or not isinstance(d.get("vocab"), (list, tuple)):
        raise ValueError(f"not a {kind} tokenizer dict (expected type={kind!r} and a vocab: a list of token strings)")


_KINDS = {"char": CharTokenizer, "word": WordTokenizer}  # "bpe": BPETokenizer, registered below


def tokenizer_from_dict(d: Mapping):
    """Rebuild a tokenizer of either kind from ``to_dict()`` output (dispatch on ``d["type"]``)."""
    kind = d.get("type") if isinstance(d, Mapping) else None
    if kind not in _KINDS:
        raise ValueError(f"unknown tokenizer type {kind!r} (expected one of {', '.join(map(repr, _KINDS))})")
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


# ---------------------------------------------------------------------------------------------------
# byte-level BPE (GPT-2)

# GPT-2's pre-tokenization: the contractions, an optional space + letters, an optional space + digits,
# an optional space + other symbols, whitespace that is not followed by a non-space (so that a run of
# spaces leaves its last space to the next word), any other whitespace. Merges never cross these
# pieces: "dog." and "dog!" share the token " dog" instead of learning " dog." and " dog!".
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
_CACHE_LIMIT = 200_000  # cached pre-token encodings before the cache is cleared
_NO_RANK = 1 << 62       # the rank of a pair that is not a merge


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character table (256 entries).

    The printable bytes ``!``..``~``, ``¡``..``¬`` and ``®``..``ÿ`` stand for themselves; the other 68
    (control bytes, space, 0x7f-0xa0, 0xad) become U+0100, U+0101, ... in byte order, so space is ``Ġ``
    and newline ``Ċ``. vocab.json and merges.txt write tokens in this alphabet.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


@lru_cache(maxsize=None)
def _compile_split():
    try:
        import regex
    except ImportError:  # pragma: no cover - regex is a dependency
        raise ImportError("BPETokenizer needs the 'regex' package (pip install regex) for \\p{L} and \\p{N}") from None
    return regex.compile(GPT2_SPLIT)


_TO_LATIN1 = {ord(c): b for c, b in _CHAR_TO_BYTE.items()}          # str.translate table: char -> byte
_OUTSIDE_ALPHABET = re.compile("[^" + re.escape("".join(_CHAR_TO_BYTE)) + "]")
_CODEPOINT_TO_BYTE = np.zeros(max(map(ord, _CHAR_TO_BYTE)) + 1, dtype=np.uint8)  # (324,) code point -> byte
_CODEPOINT_TO_BYTE[[ord(c) for c in _CHAR_TO_BYTE]] = list(_CHAR_TO_BYTE.values())


def _token_bytes(token: str) -> Optional[bytes]:
    """A token in GPT-2's byte alphabet -> its bytes; None if it holds a character outside the alphabet."""
    if _OUTSIDE_ALPHABET.search(token):
        return None
    return token.translate(_TO_LATIN1).encode("latin-1")


def _line_of(raw: str, token, occurrence: int = 1) -> str:
    """' line N:' where ``token`` appears (the ``occurrence``-th time) as a key in the JSON text ``raw``,
    for error messages; '' when it cannot be found."""
    if not isinstance(token, str):
        return ""
    for key in dict.fromkeys((json.dumps(token, ensure_ascii=False), json.dumps(token))):
        found = list(re.finditer(re.escape(key) + r"\s*:", raw))
        if len(found) >= occurrence:
            return f" line {raw.count(chr(10), 0, found[occurrence - 1].start()) + 1}:"
    return ""


class BPETokenizer(_Tokenizer):
    """Byte-level byte-pair encoding, as GPT-2: text -> UTF-8 bytes -> merged tokens.

    ``BPETokenizer(vocab, merges, special_tokens=None)`` takes GPT-2's two files' contents: ``vocab``
    maps token strings (in the :func:`bytes_to_unicode` alphabet) to ids 0..V-1, ``merges`` lists the
    pairs ``(left, right)`` in the order they were learned (rank). Every one of the 256 single-byte
    tokens must be in ``vocab``; every merge's parts and result must be too. The remaining entries are
    special tokens (``<|endoftext|>``): ``special_tokens=None`` takes every entry that is neither a
    byte nor a merge result as one, a list names them (each must be such an entry).

    Ways to get one::

        tok = BPETokenizer.train(text, vocab_size=2000)                 # learned here
        tok = BPETokenizer.from_gpt2_files("vocab.json", "merges.txt")  # GPT-2's own files
        tok.save_gpt2_files("out/")                                     # and back

    Encoding: ``encode(text)`` returns an int64 array like the other tokenizers (what training code
    uses); ``encode_ids(text)`` the same ids as a list of int. Text is split with :data:`GPT2_SPLIT`,
    each piece's bytes are merged by rank (lowest first, all occurrences left to right, GPT-2's
    rule), and each piece's ids are cached, so a corpus costs one regex pass plus one dict look-up per
    piece. Special tokens: a literal ``<|endoftext|>`` in ``text`` is ordinary text by default (its
    bytes are encoded, so special ids never come from user text); ``allowed_special="all"`` (or a set of
    names) matches them first and emits their ids, which is what Hugging Face ``tokenizers`` and
    ``GPT2TokenizerFast`` do with their added special tokens.

    ``decode(ids)`` joins the tokens' bytes and decodes UTF-8 with replacement characters (U+FFFD) for
    invalid sequences, as GPT-2 does; ids outside the vocabulary are a ValueError.
    """

    kind = "bpe"

    def __init__(self, vocab: Mapping[str, int], merges, special_tokens: Optional[Iterable[str]] = None):
        self._build(vocab, merges, special_tokens, lambda tok: "vocab:", lambda i: f"merges[{i}]:")

    # ------------------------------------------------------------------ construction
    def _build(self, vocab, merges, special_tokens, vwhere, mwhere) -> None:
        """Validate and index. ``vwhere(token)`` / ``mwhere(i)`` prefix error messages with a place."""
        if not isinstance(vocab, Mapping) or not vocab:
            raise ValueError(f"{vwhere(None)} expected a non-empty mapping token -> id")
        n = len(vocab)
        ids = list(vocab.values())
        if (set(map(type, vocab)) == {str} and set(map(type, ids)) == {int} and "" not in vocab
                and min(ids) == 0 and max(ids) == n - 1 and len(set(ids)) == n):  # the common case, in C
            by_id = dict(zip(ids, vocab))
            index = dict(vocab)
        else:
            by_id = self._check_vocab(vocab, vwhere)
            index = {t: i for i, t in by_id.items()}
        missing = [b for b, c in _BYTE_TO_CHAR.items() if c not in index]
        if missing:
            raise ValueError(f"{vwhere(None)} the single-byte token {_BYTE_TO_CHAR[missing[0]]!r} (byte "
                             f"0x{missing[0]:02x}) is missing; a byte-level vocabulary holds all 256 bytes")
        merges = list(merges)
        pairs = left = None
        if not merges:
            left = right = []
        elif set(map(type, merges)) == {str} and set(map(str.count, merges, repeat(" "))) == {1}:
            flat = " ".join(merges).split(" ")                 # "a b" lines -> a, b, a, b, ...
            left, right = flat[0::2], flat[1::2]
        elif all(type(m) in (list, tuple) and len(m) == 2 for m in merges):
            left, right = [m[0] for m in merges], [m[1] for m in merges]
        if left is not None:  # fast path: whole lists at once
            if set(map(type, left)) <= {str} and set(map(type, right)) <= {str} and "" not in left and "" not in right:
                lids, rids = list(map(index.get, left)), list(map(index.get, right))
                res = list(map(index.get, map(str.__add__, left, right)))
                if None not in lids and None not in rids and None not in res:
                    pairs = list(zip(lids, rids))
                    ranks = dict(zip(pairs, range(len(pairs))))
                    if len(ranks) != len(pairs):
                        pairs = None
        if pairs is None:  # something is wrong: find the first bad merge, one at a time, for the message
            self._check_merges([m.split(" ") if isinstance(m, str) else m for m in merges], index, mwhere)
        produced = set(map(by_id.__getitem__, res))
        base = set(_BYTE_TO_CHAR.values())
        others = [by_id[i] for i in range(n) if by_id[i] not in base and by_id[i] not in produced]
        if special_tokens is None:
            specials = others
        else:
            specials = list(special_tokens)
            for s in specials:
                if s not in index:
                    raise ValueError(f"{vwhere(s)} special token {s!r} is not in the vocabulary")
                if s in base or s in produced:
                    raise ValueError(f"{vwhere(s)} special token {s!r} is also a byte or merge token")
            extra = [t for t in others if t not in set(specials)]
            if extra:
                raise ValueError(f"{vwhere(extra[0])} token {extra[0]!r} is neither a byte, a merge result nor a "
                                 f"special token")
        special_set = set(specials)
        id_to_token = [by_id[i] for i in range(n)]
        # id -> bytes (special tokens: their UTF-8 text, which decode shows). One translate of all the
        # ordinary tokens joined (one byte per character), then cut at the tokens' lengths.
        ordinary = [t for t in id_to_token if t not in special_set]
        joined = "".join(ordinary)
        if _OUTSIDE_ALPHABET.search(joined):
            bad = next(t for t in ordinary if _token_bytes(t) is None)
            raise ValueError(f"{vwhere(bad)} token {bad!r} holds characters outside GPT-2's byte alphabet "
                             f"(and is not a special token)")
        flat_bytes = _CODEPOINT_TO_BYTE[np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)].tobytes()
        ends = list(accumulate(map(len, ordinary)))
        pieces = iter(map(flat_bytes.__getitem__, map(slice, [0] + ends[:-1], ends)))
        tbytes = [t.encode("utf-8") if t in special_set else next(pieces) for t in id_to_token]
        self.vocab: dict = dict(index)                    # token string -> id
        self.id_to_token: list = id_to_token
        self.merges: list = pairs                         # (left id, right id) by rank
        self.special_tokens: dict = {s: index[s] for s in sorted(specials, key=index.__getitem__)}
        self._ranks = ranks
        self._made = res                                  # rank -> id of the merged token
        self._bytes: list = tbytes
        self._byte_ids: list = [index[_BYTE_TO_CHAR[b]] for b in range(256)]   # byte value -> id
        self._lengths = np.fromiter(map(len, self._bytes), dtype=np.int64, count=n)  # (V,) bytes per token
        self._split = _compile_split()
        self._special_split = {}  # frozenset of allowed names -> compiled alternation
        self._cache: dict = {}

    @staticmethod
    def _check_vocab(vocab, vwhere) -> dict:
        """The slow, entry-by-entry check of a vocabulary -> id -> token; raises at the first problem."""
        by_id: dict = {}
        for tok, i in vocab.items():
            if not isinstance(tok, str) or not tok:
                raise ValueError(f"{vwhere(tok)} token {tok!r} is not a non-empty string")
            if not is_int(i) or i < 0:
                raise ValueError(f"{vwhere(tok)} id of {tok!r} must be a non-negative integer, got {i!r}")
            i = int(i)
            if i in by_id:
                raise ValueError(f"{vwhere(tok)} id {i} of {tok!r} is already the id of {by_id[i]!r} (duplicate id)")
            by_id[i] = tok
        n = len(by_id)
        if max(by_id) != n - 1:
            missing = next(i for i in range(n) if i not in by_id)
            raise ValueError(f"{vwhere(None)} ids are not contiguous: {n} tokens with ids up to {max(by_id)}, "
                             f"id {missing} is missing")
        return by_id

    @staticmethod
    def _check_merges(parts, index, mwhere) -> None:
        """The slow, merge-by-merge check; raises at the first bad merge."""
        ranks: dict = {}
        for r, m in enumerate(parts):
            if not isinstance(m, (tuple, list)) or len(m) != 2 or not all(isinstance(x, str) and x for x in m):
                raise ValueError(f"{mwhere(r)} expected two tokens separated by one space, got {m!r}")
            a, b = m
            for part in (a, b):
                if part not in index:
                    raise ValueError(f"{mwhere(r)} the token {part!r} of merge {a!r} {b!r} is not in the vocabulary")
            if a + b not in index:
                raise ValueError(f"{mwhere(r)} the result {a + b!r} of merge {a!r} {b!r} is not in the vocabulary")
            pair = (index[a], index[b])
            if pair in ranks:
                raise ValueError(f"{mwhere(r)} merge {a!r} {b!r} repeats merge {ranks[pair]} (duplicate merge)")
            ranks[pair] = r
        raise AssertionError("unreachable: the fast check failed but no merge is wrong")  # pragma: no cover

    @classmethod
    def fit(cls, text: str, vocab_size: int = 512, **kwargs) -> "BPETokenizer":
        """Alias of :meth:`train` (the name the other tokenizers use)."""
        return cls.train(text, vocab_size, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    # ------------------------------------------------------------------ encoding
    def _encode_piece(self, piece: str) -> tuple:
        """One pre-token -> its ids: the bytes, then GPT-2's merge loop (lowest rank first, every
        occurrence of that pair left to right, until no adjacent pair has a rank)."""
        ids = [self._byte_ids[b] for b in piece.encode("utf-8")]
        get, merges, made = self._ranks.get, self.merges, self._made
        while len(ids) > 1:
            ranks = list(map(get, zip(ids, ids[1:]), repeat(_NO_RANK)))   # rank of each adjacent pair
            r = min(ranks)
            if r == _NO_RANK:
                break
            new = made[r]
            if ranks.count(r) == 1:  # the usual case: one occurrence
                i = ranks.index(r)
                ids[i:i + 2] = [new]
                continue
            a, b = merges[r]
            out, i, n = [], 0, len(ids)
            while i < n:
                if i < n - 1 and ids[i] == a and ids[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        return tuple(ids)

    def _pieces_ids(self, text: str) -> list:
        """text without special tokens -> list of id tuples, one per pre-token (cached)."""
        cache = self._cache
        pieces = self._split.findall(text)
        missing = set(pieces).difference(cache)
        if len(cache) + len(missing) > _CACHE_LIMIT:
            cache.clear()
            missing = set(pieces)
        for p in missing:  # each distinct new piece once
            cache[p] = self._encode_piece(p)
        return list(map(cache.__getitem__, pieces))

    def _chunks(self, text: str, allowed_special):
        """Split ``text`` at the allowed special tokens -> (ordinary text, None) | (None, special id)."""
        if allowed_special is None or (not isinstance(allowed_special, str) and not allowed_special):
            yield text, None
            return
        if allowed_special == "all":
            names = frozenset(self.special_tokens)
        else:
            if isinstance(allowed_special, str):
                raise ValueError(f"allowed_special must be 'all' or a collection of special tokens, "
                                 f"got {allowed_special!r}")
            names = frozenset(allowed_special)
            unknown = sorted(names - set(self.special_tokens))
            if unknown:
                raise ValueError(f"allowed_special names {unknown[0]!r}, which is not a special token of this "
                                 f"vocabulary ({', '.join(map(repr, self.special_tokens)) or 'none'})")
        if not names:
            yield text, None
            return
        pat = self._special_split.get(names)
        if pat is None:  # longest first, so that a special token that contains another wins
            pat = self._special_split[names] = re.compile(
                "|".join(re.escape(s) for s in sorted(names, key=len, reverse=True)))
        start = 0
        for m in pat.finditer(text):
            if m.start() > start:
                yield text[start:m.start()], None
            yield None, self.special_tokens[m.group()]
            start = m.end()
        if start < len(text):
            yield text[start:], None

    def encode_ids(self, text: str, allowed_special=()) -> list:
        """text -> token ids as a list of int (see the class docstring for ``allowed_special``)."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        out: list = []
        for chunk, special in self._chunks(text, allowed_special):
            if special is not None:
                out.append(special)
            else:
                for ids in self._pieces_ids(chunk):
                    out.extend(ids)
        return out

    def encode(self, text: str, allowed_special=()) -> np.ndarray:
        """text -> int64 ids, shape (number of tokens,): the whole-corpus path for training.

        One regex pass over the text, one cached look-up per pre-token, and the id tuples flattened
        straight into the array (``np.fromiter`` over ``itertools.chain``)."""
        from itertools import chain

        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        parts = []
        for chunk, special in self._chunks(text, allowed_special):
            parts.extend([(special,)] if special is not None else self._pieces_ids(chunk))
        return np.fromiter(chain.from_iterable(parts), dtype=np.int64)

    encode_array = encode

    def decode(self, ids) -> str:
        """ids -> text; invalid UTF-8 (a token sequence cut inside a character) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids) -> bytes:
        """ids -> the raw bytes they stand for (special tokens as their UTF-8 text)."""
        ids = _as_ids(ids)
        _check_range(ids, self.vocab_size)
        return b"".join(map(self._bytes.__getitem__, ids.tolist()))

    def num_bytes(self, ids) -> int:
        """UTF-8 bytes that ``ids`` stand for (exact, also where a token holds part of a character)."""
        ids = _as_ids(ids)
        _check_range(ids, self.vocab_size)
        return int(self._lengths[ids].sum())

    def token_bytes(self, i: int) -> bytes:
        """The bytes of token ``i``."""
        return self._bytes[int(i)]

    # ------------------------------------------------------------------ serialisation
    def _merge_strings(self) -> list:
        t = self.id_to_token
        return [f"{t[a]} {t[b]}" for a, b in self.merges]

    def to_dict(self) -> dict:
        return {"type": self.kind, "vocab": list(self.id_to_token), "merges": self._merge_strings(),
                "special_tokens": list(self.special_tokens)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "BPETokenizer":
        _expect_type(d, cls.kind)
        vocab = d["vocab"]
        if not isinstance(vocab, list):
            raise ValueError("a bpe tokenizer dict's vocab is a list of token strings (index = id)")
        index = {}
        for i, t in enumerate(vocab):
            if t in index:
                raise ValueError(f"vocab: token {t!r} appears twice (ids {index[t]} and {i})")
            index[t] = i
        merges = d.get("merges")
        if not isinstance(merges, list):
            raise ValueError("a bpe tokenizer dict has a merges list")
        return cls(index, merges, d.get("special_tokens", []))

    @classmethod
    def from_gpt2_files(cls, vocab_json, merges_txt) -> "BPETokenizer":
        """Read GPT-2's vocab.json (token -> id) and merges.txt (``#version`` line, then one "left right"
        pair per line, by rank). Every problem is a one-line ValueError naming the file (and the line)."""
        vpath, mpath = Path(vocab_json), Path(merges_txt)
        raw = _read_text(vpath)

        def pairs_hook(pairs):
            d = dict(pairs)
            if len(d) != len(pairs):  # a key given twice, which json.loads would silently drop
                seen = set()
                for k, _ in pairs:
                    if k in seen:
                        raise _DuplicateKey(k)
                    seen.add(k)
            return d

        try:
            vocab = json.loads(raw, object_pairs_hook=pairs_hook)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{vpath}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        except _DuplicateKey as exc:
            raise ValueError(f"{vpath}:{_line_of(raw, exc.args[0], 2)} token {exc.args[0]!r} appears twice") from None
        if not isinstance(vocab, dict):
            raise ValueError(f"{vpath}: expected a JSON object mapping token -> id, got {type(vocab).__name__}")
        mraw = _read_text(mpath)
        all_lines = (mraw.replace("\r\n", "\n") if "\r" in mraw else mraw).split("\n")
        start = 1 if all_lines and all_lines[0].startswith("#version") else 0
        merges = all_lines[start:]
        while merges and not merges[-1]:
            merges.pop()
        if "" in merges:  # blank lines inside: skip them, keeping each merge's line number
            lines = [n for n, line in enumerate(merges, start=start + 1) if line]
            merges = [line for line in merges if line]
        else:
            lines = range(start + 1, start + 1 + len(merges))

        def mwhere(r):
            return f"{mpath}: line {lines[r]}:"

        def vwhere(tok):
            return f"{vpath}:" + (_line_of(raw, tok) if tok is not None else "")

        tok = cls.__new__(cls)
        tok._build(vocab, merges, None, vwhere, mwhere)
        return tok

    def save_gpt2_files(self, directory) -> tuple:
        """Write ``directory/vocab.json`` and ``directory/merges.txt`` (each atomically); returns both paths."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"{directory}: exists and is not a directory")
        vocab = json.dumps({t: i for i, t in enumerate(self.id_to_token)}, ensure_ascii=False)
        merges = "#version: 0.2\n" + "".join(m + "\n" for m in self._merge_strings())
        vpath, mpath = directory / "vocab.json", directory / "merges.txt"
        atomic_write_text(vpath, vocab)
        atomic_write_text(mpath, merges)
        return vpath, mpath

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)})")

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: Iterable[str] = (ENDOFTEXT,), min_frequency: int = 2,
              progress=None) -> "BPETokenizer":
        """Learn merges on ``text`` until the vocabulary (256 bytes + merges + ``special_tokens``) holds
        ``vocab_size`` tokens, or no pair occurs ``min_frequency`` times.

        The text is cut at the special tokens (they are never part of a merge) and split into
        pre-tokens with :data:`GPT2_SPLIT`; the unique pre-tokens are counted once, and merges work
        on them weighted by their counts. Each merge touches only the words that contain the pair
        (``where``: pair -> set of word indices) and updates the pair counts of their neighbours; the
        most frequent pair comes off a heap whose stale entries are re-pushed with their current
        count when popped (lazy invalidation).

        Tie-break (deterministic): the highest count, then the smallest pair of ids, with the 256
        byte tokens numbered in the order of their :func:`bytes_to_unicode` characters (GPT-2's own
        vocab.json order) and merged tokens numbered as they are made. This is Hugging Face
        ``tokenizers``' BpeTrainer rule and numbering, so on the same text the two learn the same merges.
        Like it, a merge whose result equals an existing token (``a`` + ``bc`` after ``ab`` + ``c``)
        keeps that token's id. Special tokens take the last ids (GPT-2 puts ``<|endoftext|>`` last).

        ``progress``: a tqdm bar over the merges; None shows it for more than 5,000 merges.
        """
        import heapq

        if not isinstance(text, str) or not text:
            raise ValueError("text: cannot train a BPE tokenizer on empty text")
        if isinstance(special_tokens, str):
            special_tokens = (special_tokens,)
        specials = list(dict.fromkeys(special_tokens or ()))
        for s in specials:
            if not isinstance(s, str) or not s:
                raise ValueError(f"special_tokens: each is a non-empty string, got {s!r}")
        if not is_int(vocab_size) or vocab_size < 256 + len(specials):
            raise ValueError(f"vocab_size must be an integer >= {256 + len(specials)} (256 bytes + "
                             f"{len(specials)} special tokens), got {vocab_size!r}")
        if not is_int(min_frequency) or min_frequency < 1:
            raise ValueError(f"min_frequency must be a positive integer, got {min_frequency!r}")

        # base tokens: the 256 byte characters in code-point order (= GPT-2's vocab.json ids 0..255)
        base = sorted(_BYTE_TO_CHAR.values())
        id_to_token = list(base)
        token_to_id = {t: i for i, t in enumerate(base)}
        byte_id = [token_to_id[_BYTE_TO_CHAR[b]] for b in range(256)]

        pieces = [text]
        if specials:
            cut = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
            pieces = cut.split(text)
        split = _compile_split()
        counts = Counter()
        for piece in pieces:
            counts.update(split.findall(piece))
        words = [[byte_id[b] for b in w.encode("utf-8")] for w in counts]     # ids of each unique pre-token
        freqs = list(counts.values())

        pair_counts: dict = {}
        where: dict = {}
        for wi, (w, f) in enumerate(zip(words, freqs)):
            for pair in zip(w, w[1:]):
                pair_counts[pair] = pair_counts.get(pair, 0) + f
                s = where.get(pair)
                if s is None:
                    where[pair] = {wi}
                else:
                    s.add(wi)
        heap = [(-c, p) for p, c in pair_counts.items()]
        heapq.heapify(heap)

        target = vocab_size - len(specials)
        bar = None
        if progress or (progress is None and target - 256 > 5000):
            from tqdm.auto import tqdm
            bar = tqdm(total=target - 256, desc="bpe merges", unit="merge", mininterval=0.5)
        merges = []
        try:
            while len(id_to_token) < target and heap:
                negc, pair = heapq.heappop(heap)
                c = pair_counts.get(pair, 0)
                if -negc != c:              # stale: re-queue with the current count
                    if c > 0:
                        heapq.heappush(heap, (-c, pair))
                    continue
                if c < min_frequency:
                    break
                a, b = pair
                merged = id_to_token[a] + id_to_token[b]
                new = token_to_id.get(merged)
                if new is None:
                    new = token_to_id[merged] = len(id_to_token)
                    id_to_token.append(merged)
                    if bar is not None:
                        bar.update(1)
                merges.append((id_to_token[a], id_to_token[b]))
                del pair_counts[pair]
                touched = set()
                for wi in where.pop(pair):
                    w = words[wi]
                    n = len(w)
                    f = freqs[wi]
                    out = []
                    i = 0
                    while i < n:
                        if i < n - 1 and w[i] == a and w[i + 1] == b:
                            if out:  # left neighbour (possibly the token just merged)
                                prev = out[-1]
                                pair_counts[(prev, a)] -= f
                                p = (prev, new)
                                pair_counts[p] = pair_counts.get(p, 0) + f
                                where.setdefault(p, set()).add(wi)
                                touched.add(p)
                            if i + 2 < n:  # right neighbour
                                nxt = w[i + 2]
                                if (b, nxt) != pair:
                                    pair_counts[(b, nxt)] -= f
                                p = (new, nxt)
                                pair_counts[p] = pair_counts.get(p, 0) + f
                                where.setdefault(p, set()).add(wi)
                                touched.add(p)
                            out.append(new)
                            i += 2
                        else:
                            out.append(w[i])
                            i += 1
                    if len(out) != n:
                        words[wi] = out
                for p in touched:
                    c = pair_counts[p]
                    if c > 0:
                        heapq.heappush(heap, (-c, p))
        finally:
            if bar is not None:
                bar.close()
        vocab = {t: i for i, t in enumerate(id_to_token)}
        for s in specials:
            if s in vocab:
                raise ValueError(f"special_tokens: {s!r} is also an ordinary token of the learned vocabulary")
            vocab[s] = len(vocab)
        return cls(vocab, merges, specials)


class _DuplicateKey(Exception):
    pass


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, expected a file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 (byte offset {exc.start})") from None


_KINDS["bpe"] = BPETokenizer
TOKENIZER_KINDS = tuple(_KINDS)  # "char", "word", "bpe": the kinds a checkpoint and `train --tokenizer` name
