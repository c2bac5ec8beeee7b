"""Prime numbers: a vectorised sieve, the n-th prime, the clock wheel, and the seed's broken generator.

Everything here is computed on demand; importing the module does no work. The largest sieve computed so
far is memoised, so asking for fewer primes afterwards is a slice, not a new sieve.

Conventions
-----------
- ``primes_below(n)`` returns the primes ``p < n`` (strictly below), as an int64 array.
- ``nth_prime(k)`` is 1-based: ``nth_prime(1) == 2``, ``nth_prime(2) == 3``.
- ``first_primes(k)`` returns ``[nth_prime(1), ..., nth_prime(k)]``.
"""
from __future__ import annotations

import math
import threading

import numpy as np

from .._validate import check_int, check_int_array

# Largest sieve limit accepted: the odd-only sieve needs n/2 bytes (500 MB at this limit).
MAX_SIEVE = 10**9

# The clock wheel: residues mod 12 that a prime > 3 can have (the units of Z/12Z).
CLOCK_WHEEL_RESIDUES = (1, 5, 7, 11)

# The seed's "geometric" generator, as reconstructed (see geometric_filter_pitfall).
PITFALL_WHEEL_RESIDUES = (1, 7, 11, 17, 19, 23, 29)   # the eight units mod 30, with 13 forgotten
PITFALL_SEED_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61)

_lock = threading.Lock()
_sieved_limit = 0                                   # every prime < _sieved_limit is in _sieved
_sieved = np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# the sieve
# --------------------------------------------------------------------------------------------------
def _sieve(n: int) -> np.ndarray:
    """Primes below ``n`` by an odd-only sieve of Eratosthenes (int64, ascending)."""
    if n <= 2:
        return np.zeros(0, dtype=np.int64)
    is_odd_prime = np.ones(n // 2, dtype=bool)       # (n//2,) index i stands for 2*i + 1
    is_odd_prime[0] = False                            # 1 is not prime
    for i in range(1, (math.isqrt(n - 1) - 1) // 2 + 1):   # only up to sqrt(n): a short loop
        if is_odd_prime[i]:
            p = 2 * i + 1
            is_odd_prime[p * p // 2::p] = False        # odd multiples p^2, p^2 + 2p, ...
    odd = 2 * np.flatnonzero(is_odd_prime).astype(np.int64) + 1   # (pi(n) - 1,)
    return np.concatenate([np.array([2], dtype=np.int64), odd])   # (pi(n),)


def primes_below(n) -> np.ndarray:
    """Return every prime ``p < n`` as an ascending int64 array (a fresh copy).

    Uses a vectorised odd-only sieve of Eratosthenes; ``primes_below(200000)`` takes about a millisecond.
    The largest sieve so far is memoised, so smaller requests are slices of it.
    """
    global _sieved, _sieved_limit
    n = check_int("n", n, 0, MAX_SIEVE)
    with _lock:
        if n > _sieved_limit:
            _sieved = _sieve(n)
            _sieved_limit = n
        primes = _sieved
    return primes[: np.searchsorted(primes, n)].copy()   # (pi(n),)


def prime_upper_bound(k) -> int:
    """Return an integer ``N`` with ``nth_prime(k) <= N`` (1-based ``k >= 1``).

    For ``k >= 6`` this is Rosser's bound ``p_k < k (ln k + ln ln k)``; below 6 it is 13 (``p_5 = 11``).
    """
    k = check_int("k", k, 1)
    if k < 6:
        return 13
    return int(k * (math.log(k) + math.log(math.log(k)))) + 1


def first_primes(k) -> np.ndarray:
    """Return the first ``k`` primes ``[2, 3, 5, ...]`` as an int64 array of length ``k`` (``k >= 0``)."""
    k = check_int("k", k, 0)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    primes = primes_below(prime_upper_bound(k) + 1)
    return primes[:k]                                   # (k,)


def nth_prime(k) -> int:
    """Return the ``k``-th prime, 1-based: ``nth_prime(1) == 2``, ``nth_prime(10) == 29``."""
    k = check_int("k", k, 1)
    return int(first_primes(k)[-1])


def prime_index(values) -> np.ndarray:
    """Return the 1-based index ``k`` of each prime in ``values`` (so ``nth_prime(k) == p``).

    Raises ``ValueError`` if an entry is not prime.
    """
    values = check_int_array("values", values, lo=2)
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.int64)
    primes = primes_below(int(values.max()) + 1)
    idx = np.searchsorted(primes, values)              # same shape as values
    if not np.all(primes[np.minimum(idx, primes.size - 1)] == values):
        raise ValueError("values must all be prime")
    return idx.astype(np.int64) + 1


def is_prime(values) -> np.ndarray:
    """Return a boolean array: which entries of ``values`` (integers) are prime."""
    values = check_int_array("values", values)
    if values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    top = int(values.max())
    primes = primes_below(max(top, 2) + 1)
    idx = np.searchsorted(primes, values)
    return (values >= 2) & (primes[np.minimum(idx, primes.size - 1)] == values)


# --------------------------------------------------------------------------------------------------
# the clock wheel
# --------------------------------------------------------------------------------------------------
def clock_residues(values, modulus=12) -> np.ndarray:
    """Return ``values mod modulus`` (the position of each integer on a clock with ``modulus`` hours)."""
    modulus = check_int("modulus", modulus, 1)
    return np.mod(check_int_array("values", values), modulus)


def clock_wheel_counts(n, modulus=12) -> dict[int, int]:
    """Count the primes below ``n`` in each residue class mod ``modulus``.

    With ``modulus=12`` every prime except 2 and 3 lands on 1, 5, 7 or 11 (the residues coprime to 12:
    any other residue shares the factor 2 or 3 with 12, so a number there is divisible by 2 or 3).
    Returns ``{residue: count}`` for every residue ``0 .. modulus - 1`` (zeros included).
    """
    modulus = check_int("modulus", modulus, 1)
    counts = np.bincount(clock_residues(primes_below(n), modulus), minlength=modulus)   # (modulus,)
    return {r: int(c) for r, c in enumerate(counts)}


# --------------------------------------------------------------------------------------------------
# the pitfall: the seed's "geometric prime generator" (kept, broken, for teaching)
# --------------------------------------------------------------------------------------------------
def geometric_filter_pitfall(n=200000) -> np.ndarray:
    """BROKEN ON PURPOSE: the original C project's "geometric prime generator", reconstructed.

    It is a residue filter, not a prime test. The rule below reproduces the original log exactly
    ("Generated 23094 primes" up to 200000):

    1. the 18 seed primes below 67 (2, 3, 5, ..., 61) are accepted as given;
    2. any other ``m`` with ``2 <= m < n`` is accepted when ``m mod 30`` is one of the wheel spokes
       1, 7, 11, 17, 19, 23, 29 -- the eight units mod 30 with **13 forgotten** -- and no seed prime
       divides ``m`` (trial division stops at 61).

    Its two bugs: every composite whose prime factors are all >= 67 passes (4489 = 67^2 is the smallest,
    then 67 * 71 = 4757, ...), and every prime = 13 (mod 30) above 43 is missed (73, 103, 163, ...).
    Below 200000: 23094 accepted, 7376 of them composite, 2266 primes missed, and indeed
    17984 - 2266 + 7376 = 23094. Use :func:`primes_below` for real primes.

    Boundary conventions: candidates are ``2 <= m < n`` (1 is never accepted; with 1 the count would be
    23095). "Below 200000" and "up to 200000" agree, since 200000 is even.

    Returns the accepted numbers below ``n``, ascending, as int64.
    """
    n = check_int("n", n, 0, MAX_SIEVE)
    m = np.arange(n, dtype=np.int64)                                 # (n,)
    accept = np.isin(m % 30, PITFALL_WHEEL_RESIDUES)                 # (n,) spokes of the mod-30 wheel
    for p in PITFALL_SEED_PRIMES[3:]:                                # 2, 3, 5 are already excluded
        accept[::p] = False                                          # multiples of p (0, p, 2p, ...)
    accept[: min(n, 2)] = False                                      # 0 and 1
    seeds = np.array([p for p in PITFALL_SEED_PRIMES if p < n], dtype=np.int64)
    accept[seeds] = True                                             # the seed primes themselves
    return np.flatnonzero(accept).astype(np.int64)                   # (accepted,)


def pitfall_report(n=200000) -> dict:
    """Compare :func:`geometric_filter_pitfall` with the sieve below ``n``.

    Returns a dict with ``accepted``, ``true_primes``, ``composites_accepted``, ``primes_missed`` (counts),
    ``smallest_composite`` (or None), ``first_missed`` (up to 5 missed primes), and
    ``missed_residues_mod_30`` (the sorted residues mod 30 of the missed primes).
    """
    n = check_int("n", n, 0, MAX_SIEVE)
    accepted = geometric_filter_pitfall(n)
    primes = primes_below(n)
    composite = accepted[~np.isin(accepted, primes)]                 # accepted but not prime
    missed = primes[~np.isin(primes, accepted)]                      # prime but not accepted
    return {
        "n": n,
        "accepted": int(accepted.size),
        "true_primes": int(primes.size),
        "composites_accepted": int(composite.size),
        "primes_missed": int(missed.size),
        "smallest_composite": int(composite[0]) if composite.size else None,
        "first_missed": [int(p) for p in missed[:5]],
        "missed_residues_mod_30": sorted({int(r) for r in np.unique(missed % 30)}),
    }
