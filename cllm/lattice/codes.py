"""Composite codes: each word gets ``code = p_stem * p_affix`` so that GCD similarity carries information.

Mapping token ``i`` to the ``i``-th prime (the original design) makes every pair of codes coprime, so
``gcd_similarity`` can only say "same token" or "different token". Here a word is split into a stem and
a suffix class; affix classes get the smallest primes and stems the following primes (by frequency
rank), and the word's code is their product. Two words that share a stem share the stem prime
(walk / walked / walking), two words with the same suffix class share the affix prime (walked / jumped),
and anything else is coprime.

The splitter is deliberately crude and fully documented: the longest suffix in :data:`SUFFIXES` that
leaves a stem of at least :data:`MIN_STEM` characters is cut off, with no spelling repair (so "running"
-> "runn" + "ing"). Because ``word == stem + suffix`` the split is invertible, and since stem primes and
affix primes are disjoint, unique factorisation makes the codes unique per distinct word.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .._validate import check_int_array, is_int
from .primes import first_primes

# English suffix classes (all lower case, matched case-sensitively on the word as given).
SUFFIXES = ("ing", "ed", "es", "s", "ly", "er", "est", "tion", "ness", "ment", "able", "ful", "less")
# Affix classes: "" (no suffix) first, then the suffixes; class c gets the c-th smallest prime.
AFFIX_CLASSES = ("",) + SUFFIXES
MIN_STEM = 3
_BY_LENGTH = sorted(SUFFIXES, key=len, reverse=True)        # try "tion" before "s"


def split_word(word: str) -> tuple[str, str]:
    """Split ``word`` into ``(stem, suffix)`` with ``stem + suffix == word``.

    The suffix is the longest entry of :data:`SUFFIXES` that ``word`` ends with while leaving at least
    :data:`MIN_STEM` characters; otherwise it is ``""`` (the "no suffix" class).
    """
    if not isinstance(word, str):
        raise ValueError(f"word must be a str, got {type(word).__name__}")
    for suffix in _BY_LENGTH:
        if word.endswith(suffix) and len(word) - len(suffix) >= MIN_STEM:
            return word[: -len(suffix)], suffix
    return word, ""


@dataclass
class Codebook:
    """Composite codes for a vocabulary, with the tables needed to factor them back.

    ``codes`` maps word -> ``p_stem * p_affix``; ``stem_prime`` maps stem -> prime; ``affix_prime`` maps
    suffix ("" for none) -> prime. Every affix prime is smaller than every stem prime.
    """

    codes: dict[str, int]
    stem_prime: dict[str, int]
    affix_prime: dict[str, int]
    _stem_of: dict[int, str] = field(default_factory=dict, repr=False)
    _affix_of: dict[int, str] = field(default_factory=dict, repr=False)
    _word_of: dict[int, str] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        """Build the inverse tables (prime -> stem, prime -> suffix, code -> word)."""
        self._stem_of = {p: s for s, p in self.stem_prime.items()}
        self._affix_of = {p: s for s, p in self.affix_prime.items()}
        self._word_of = {c: w for w, c in self.codes.items()}

    def factor(self, code: int) -> tuple[str, str]:
        """Return ``(stem, suffix)`` of a code from this codebook (inverse of the coding)."""
        p_stem, p_affix = split_code(code, tuple(sorted(self._affix_of)))
        if p_stem not in self._stem_of or p_affix not in self._affix_of:
            raise ValueError(f"code {code} is not a product of this codebook's primes")
        return self._stem_of[p_stem], self._affix_of[p_affix]

    def word(self, code: int) -> str:
        """Return the word whose code is ``code``."""
        try:
            return self._word_of[int(code)]
        except KeyError:
            raise ValueError(f"code {code} is not in this codebook") from None

    def array(self, words) -> np.ndarray:
        """Return the codes of ``words`` as an int64 array (in the given order)."""
        return np.array([self.codes[w] for w in words], dtype=np.int64)


def build_codebook(words, counts=None) -> Codebook:
    """Build the :class:`Codebook` of ``words`` (see :func:`composite_codes` for the arguments)."""
    words = list(words)
    for w in words:
        if not isinstance(w, str):
            raise ValueError(f"words must be strings, got {type(w).__name__}")
    word_count = _word_counts(words, counts)                      # distinct words, first-seen order
    stem_count: Counter = Counter()
    first_seen: dict[str, int] = {}
    for w, c in word_count.items():
        stem, _ = split_word(w)
        stem_count[stem] += c
        first_seen.setdefault(stem, len(first_seen))
    stems = sorted(stem_count, key=lambda s: (-stem_count[s], first_seen[s]))   # frequency rank
    primes = first_primes(len(AFFIX_CLASSES) + len(stems))
    affix_prime = {a: int(p) for a, p in zip(AFFIX_CLASSES, primes)}
    stem_prime = {s: int(p) for s, p in zip(stems, primes[len(AFFIX_CLASSES):])}
    codes = {}
    for w in word_count:
        stem, suffix = split_word(w)
        codes[w] = stem_prime[stem] * affix_prime[suffix]
    return Codebook(codes=codes, stem_prime=stem_prime, affix_prime=affix_prime)


def composite_codes(words, counts=None) -> dict[str, int]:
    """Return ``{word: p_stem * p_affix}`` for every distinct word.

    ``words`` is an iterable of strings (a vocabulary, or a corpus with repeats). ``counts`` is optional:
    a mapping word -> count, or a sequence of counts aligned with ``words``; without it each occurrence
    in ``words`` counts once. Stems are ranked by total count (ties: first appearance), and the most
    frequent stem gets the smallest stem prime. Affix primes: "" -> 2, "ing" -> 3, "ed" -> 5, ... in the
    order of :data:`AFFIX_CLASSES`. Distinct words always get distinct codes.
    """
    return build_codebook(words, counts).codes


def split_code(code, affix_primes=None) -> tuple[int, int]:
    """Factor a composite code into ``(p_stem, p_affix)``.

    The affix prime is the code's smallest prime factor among ``affix_primes`` (default: the
    ``len(AFFIX_CLASSES)`` smallest primes); the stem prime is the cofactor.
    """
    code = int(check_int_array("code", code, lo=2))
    if affix_primes is None:
        affix_primes = first_primes(len(AFFIX_CLASSES))
    for p in affix_primes:
        p = int(p)
        if code % p == 0:
            return code // p, p
    raise ValueError(f"code {code} has no affix prime factor")


def _word_counts(words: list, counts) -> dict[str, int]:
    """Return ``{distinct word: count}`` in first-seen order from ``words`` and optional ``counts``."""
    if counts is None:
        return dict(Counter(words))
    if isinstance(counts, dict):
        out = {}
        for w in words:
            c = counts.get(w, 0)
            if not is_int(c) or c < 0:
                raise ValueError(f"counts must be non-negative integers, got {c!r} for {w!r}")
            out[w] = int(c)
        return out
    counts = list(counts)
    if len(counts) != len(words):
        raise ValueError(f"counts must have one entry per word ({len(words)}), got {len(counts)}")
    out: dict[str, int] = {}
    for w, c in zip(words, counts):
        if not is_int(c) or c < 0:
            raise ValueError(f"counts must be non-negative integers, got {c!r} for {w!r}")
        out[w] = out.get(w, 0) + int(c)
    return out
