"""The lattice cache: one numpy structured record per prime, built lazily and memoised.

The original C program filled a table of 23094 "primes" (really the output of a broken residue filter,
see :func:`cllm.lattice.primes.geometric_filter_pitfall`) at startup, 64 bytes per entry (1.41 MB), and
stored a radius ``3^O`` that overflowed to ``inf`` for ``n >= 1355``. Here:

- the primes are real (a sieve), and nothing is computed until the records are first read;
- exponential quantities are stored as logs (``log3_p = log_3 p``), so every field is finite;
- :func:`get_cache` keeps one cache per feature size and reuses it for any request it is big enough for.

Record fields (packed, no padding):

============  ========  ================================================================
value         int64     the prime ``p``
index         int32     0-based position ``i``: ``value == nth_prime(i + 1)`` (token ``i``)
mod12         uint8     ``p mod 12``: 1, 5, 7 or 11 for every ``p > 3`` (the clock wheel)
mod60         uint8     ``p mod 60``
clock_ring    int32     ``i // 12``: which turn of the 12-position clock token ``i`` sits on
ulam_ring     int32     the Ulam-spiral ring of ``p`` (Chebyshev distance from 1)
angle         float64   clock angle ``2 pi (p mod 12) / 12``
log3_p        float64   ``log_3 p`` (the original stored ``3^O``, which overflowed)
ulam_x/_y     int32     the point of ``p`` on the Ulam spiral
vogel_x/_y    float64   the point of ``p`` on the golden-angle spiral (radius ``sqrt p``)
features      float64   ``(feature_dim,)``: ``prime_features`` of ``p`` over this cache's primes
============  ========  ================================================================
"""
from __future__ import annotations

import threading

import numpy as np

from .coords import clock_angle, ulam_ring, ulam_xy, vogel_xy
from .features import prime_features
from .._validate import check_int
from .primes import first_primes

ORIGINAL_ENTRY_BYTES = 64          # the C program's entry size
ORIGINAL_ENTRIES = 23094           # the C program's table length ("Generated 23094 primes")
DEFAULT_FEATURE_DIM = 16


def cache_dtype(feature_dim=DEFAULT_FEATURE_DIM) -> np.dtype:
    """Return the packed structured dtype of one cache record with a ``feature_dim``-long feature vector."""
    feature_dim = check_int("feature_dim", feature_dim, 1)
    return np.dtype([
        ("value", np.int64),
        ("index", np.int32),
        ("mod12", np.uint8),
        ("mod60", np.uint8),
        ("clock_ring", np.int32),
        ("ulam_ring", np.int32),
        ("angle", np.float64),
        ("log3_p", np.float64),
        ("ulam_x", np.int32),
        ("ulam_y", np.int32),
        ("vogel_x", np.float64),
        ("vogel_y", np.float64),
        ("features", np.float64, (feature_dim,)),
    ])


class LatticeCache:
    """One structured record per prime for the first ``n_primes`` primes (built on first access).

    ``cache.records`` is the read-only structured array (built and memoised on first use);
    ``cache["value"]`` or ``cache[i]`` index it. ``nbytes`` and ``bytes_per_entry`` are known without
    building. Construction itself does no work, so creating a cache at import time costs nothing.
    """

    def __init__(self, n_primes, feature_dim=DEFAULT_FEATURE_DIM):
        """Record the sizes; validate them (``n_primes >= 1``, ``feature_dim >= 1``). Builds nothing."""
        self.n_primes = check_int("n_primes", n_primes, 1)
        self.feature_dim = check_int("feature_dim", feature_dim, 1)
        self.dtype = cache_dtype(self.feature_dim)
        self._records = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        """True once the records have been computed."""
        return self._records is not None

    @property
    def records(self) -> np.ndarray:
        """The ``(n_primes,)`` structured array of records (built on first access, then memoised)."""
        if self._records is None:
            with self._lock:
                if self._records is None:
                    self._records = self._build()
        return self._records

    def _build(self) -> np.ndarray:
        """Compute every field, vectorised over all primes; return a read-only structured array."""
        n = self.n_primes
        p = first_primes(n)                                            # (n,)
        idx = np.arange(n, dtype=np.int64)                             # (n,)
        rec = np.zeros(n, dtype=self.dtype)                            # (n,) structured
        rec["value"] = p
        rec["index"] = idx
        rec["mod12"] = p % 12
        rec["mod60"] = p % 60
        rec["clock_ring"] = idx // 12
        rec["ulam_ring"] = ulam_ring(p)
        rec["angle"] = clock_angle(p, 12)
        rec["log3_p"] = np.log(p.astype(np.float64)) / np.log(3.0)
        u = ulam_xy(p)                                                 # (n, 2)
        rec["ulam_x"], rec["ulam_y"] = u[:, 0], u[:, 1]
        vg = vogel_xy(p)                                               # (n, 2)
        rec["vogel_x"], rec["vogel_y"] = vg[:, 0], vg[:, 1]
        rec["features"] = prime_features(p, self.feature_dim)          # (n, feature_dim)
        rec.flags.writeable = False
        return rec

    # ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of records (known without building)."""
        return self.n_primes

    def __getitem__(self, key):
        """Index the records: a field name gives a column, an int or slice gives records."""
        return self.records[key]

    def __repr__(self) -> str:
        """Show the size and whether the records are built."""
        state = "built" if self.built else "not built"
        return f"LatticeCache(n_primes={self.n_primes}, feature_dim={self.feature_dim}, {state}, {self.nbytes} bytes)"

    @property
    def fields(self) -> tuple[str, ...]:
        """The record field names."""
        return self.dtype.names

    @property
    def bytes_per_entry(self) -> int:
        """Bytes per record (the packed dtype's itemsize)."""
        return int(self.dtype.itemsize)

    @property
    def nbytes(self) -> int:
        """Total bytes of the records array (``n_primes * bytes_per_entry``; equals ``records.nbytes``)."""
        return self.n_primes * self.bytes_per_entry

    def memory_report(self) -> dict:
        """Return sizes next to the original C table (64-byte entries, 23094 of them = 1.41 MB).

        Keys: ``entries``, ``bytes_per_entry``, ``nbytes``, ``megabytes``, ``original_bytes_per_entry``,
        ``original_nbytes`` (for the same number of entries), ``ratio`` (ours / original).
        """
        original = self.n_primes * ORIGINAL_ENTRY_BYTES
        return {
            "entries": self.n_primes,
            "bytes_per_entry": self.bytes_per_entry,
            "nbytes": self.nbytes,
            "megabytes": self.nbytes / 2**20,
            "original_bytes_per_entry": ORIGINAL_ENTRY_BYTES,
            "original_nbytes": original,
            "ratio": self.nbytes / original,
        }


_caches: dict[int, LatticeCache] = {}
_caches_lock = threading.Lock()


def get_cache(n_primes, feature_dim=DEFAULT_FEATURE_DIM) -> LatticeCache:
    """Return a memoised :class:`LatticeCache` with at least ``n_primes`` records.

    One cache is kept per ``feature_dim``; it is reused whenever it is big enough (the result may hold
    more records than asked for: use ``cache.records[:n_primes]``) and replaced by a bigger one when not.
    The records are still built lazily, on first access. Note that ``features`` are normalised over the
    whole cache they belong to.
    """
    n_primes = check_int("n_primes", n_primes, 1)
    feature_dim = check_int("feature_dim", feature_dim, 1)
    with _caches_lock:
        cache = _caches.get(feature_dim)
        if cache is None or len(cache) < n_primes:
            cache = LatticeCache(n_primes, feature_dim)
            _caches[feature_dim] = cache
        return cache


def clear_caches() -> None:
    """Forget every memoised cache (the next :func:`get_cache` starts afresh)."""
    with _caches_lock:
        _caches.clear()
