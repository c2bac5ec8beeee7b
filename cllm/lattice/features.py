"""A fixed prime feature map ``F(token)`` and the per-token lattice angles.

``prime_features(values, k)`` turns each prime (or composite code) into ``k`` numbers built from the
geometry the course studies. A lattice embedding is then ``F @ W`` (``W`` learned, ``(k, d_model)``) plus a
learned residual table; the attention bias uses the angles from :func:`token_angles`.

Columns of ``F``, in this order (the first ``k`` are kept):

====  ===================================================================
0     ``u = log p / log p_max`` in ``(0, 1]`` (strictly increasing in ``p``)
1-2   clock, 12 positions: ``cos, sin`` of ``2 pi (p mod 12) / 12``
3-4   clock, 60 positions: ``cos, sin`` of ``2 pi (p mod 60) / 60``
5-6   Vogel spiral point of ``p``, radius divided by ``sqrt(p_max)``
7-8   Ulam spiral point of ``p``, divided by the largest ring in the set
9-    ``cos(w_j log p), sin(w_j log p)`` with ``w_j = pi j^(3/2)``, ``j = 1, 2, ...``
====  ===================================================================

Scaling (``normalize``): every raw column lies in ``[-1, 1]``. By default (``"rms"``) each column is
divided by its root-mean-square over the given set, so every column has unit RMS; columns are *not*
centred, because centring makes the ``n x k`` matrix rank-deficient when ``n == k``. ``"standard"`` gives
zero mean and unit standard deviation instead, ``"none"`` leaves the raw ``[-1, 1]`` values.

Guarantees (tested), for distinct values ``>= 2`` and any ``k >= 1``: finite; no zero row (``u > 0``, and
the 12-clock pair has ``cos^2 + sin^2 = 1``); distinct values give distinct rows (``u`` is strictly
increasing in ``p`` and, as column 0, is kept for every ``k``); full column rank for ``n >= k``, with
condition numbers below about 10^4 (checked on the first ``n`` primes up to ``k = 512`` and on composite
codes). The super-linear frequencies matter: evenly spaced frequencies of a log variable are nearly
dependent where the points crowd together, and lost rank beyond ``k`` of about 60.
The original embedding zeroed every row ``t = 3, 9 (mod 12)`` and had rank 60 for ``10000 x 512``; this map
has neither defect.

Clocks of residues (for modular arithmetic, :mod:`cllm.lab.grokking`): :func:`fourier_features` gives
``cos, sin (2 pi k v / m)`` for every frequency k (orthogonal, rank m - 1 over the m residues),
:func:`crt_clock_features` one such clock per prime power of m, :func:`random_features` the random
control of a given shape.
"""
from __future__ import annotations

import numpy as np

from .coords import clock_features, log_prime_features, ulam_xy, vogel_angle
from .._validate import check_int, check_int_array
from .primes import first_primes

N_BASE = 9                     # u (1) + clock 12 (2) + clock 60 (2) + Vogel (2) + Ulam (2)
NORMALIZE = ("rms", "standard", "none")
ANGLE_KINDS = ("clock", "vogel")


def prime_features(primes_or_codes, k=32, normalize="rms") -> np.ndarray:
    """Return the fixed feature matrix ``F`` of shape ``(n, k)`` (float64) for positive integers.

    ``primes_or_codes`` is a 1-D sequence of distinct positive integers (token primes or composite codes);
    the columns are listed in the module docstring and scaled by ``normalize`` (``"rms"``, ``"standard"``
    or ``"none"``). Features depend on the set only through the normalisations (largest value, largest
    Ulam ring, and the column scaling); the clock and ``log p`` frequency columns do not depend on it.
    """
    v = check_int_array("primes_or_codes", primes_or_codes, lo=1)
    if v.ndim != 1:
        raise ValueError(f"primes_or_codes must be 1-D, got shape {v.shape}")
    k = check_int("k", k, 1)
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    n = v.size
    if n == 0:
        return np.zeros((0, k))
    clock = clock_features(v, (12, 60))                                # (n, 4)
    angle = vogel_angle(v)                                             # (n,)
    radius = np.sqrt(v / float(v.max()))                               # (n,) in (0, 1]
    vogel = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)   # (n, 2)
    ulam = ulam_xy(v).astype(np.float64)                               # (n, 2)
    ulam /= max(float(np.abs(ulam).max()), 1.0)                         # (n, 2) in [-1, 1]
    n_freq = max(0, -(-(k - N_BASE) // 2))                              # ceil((k - 9) / 2)
    logf = log_prime_features(v, n_freq)                               # (n, 1 + 2 n_freq)
    F = np.concatenate([logf[:, :1], clock, vogel, ulam, logf[:, 1:]], axis=1)[:, :k]   # (n, k)
    if normalize == "standard":
        F = F - F.mean(axis=0)
        std = F.std(axis=0)
        F = F / np.where(std > 0, std, 1.0)
    elif normalize == "rms":
        rms = np.sqrt(np.mean(F * F, axis=0))                          # (k,)
        F = F / np.where(rms > 0, rms, 1.0)
    return np.ascontiguousarray(F)                                     # (n, k)


def token_primes(vocab_size, order=None) -> np.ndarray:
    """Return the prime of each token id: int64 of shape ``(vocab_size,)``.

    ``order`` lists the token ids by descending frequency (``order[r]`` is the token of rank ``r``); the
    token of rank ``r`` gets the ``(r + 1)``-th prime, so frequent tokens get small primes. Without
    ``order`` token ``i`` gets the ``(i + 1)``-th prime (2, 3, 5, ...).
    """
    V = check_int("vocab_size", vocab_size, 1)
    primes = first_primes(V)                                           # (V,)
    if order is None:
        return primes
    order = check_int_array("order", order).reshape(-1)                   # (V,)
    if order.size != V or not np.array_equal(np.sort(order), np.arange(V)):
        raise ValueError(f"order must be a permutation of range({V})")
    out = np.empty(V, dtype=np.int64)
    out[order] = primes                                                # token order[r] -> prime r
    return out


def token_features(vocab_size, k=32, order=None, normalize="rms") -> np.ndarray:
    """Return ``prime_features(token_primes(vocab_size, order), k, normalize)``: shape ``(vocab_size, k)``."""
    return prime_features(token_primes(vocab_size, order), k, normalize)


def token_angles(vocab_size, order=None, kind="clock", modulus=12) -> np.ndarray:
    """Return each token's lattice angle ``theta`` in ``[0, 2 pi)``: float64 of shape ``(vocab_size,)``.

    ``kind="clock"``: ``2 pi (p mod modulus) / modulus`` with ``p`` the token's prime (with 12 positions the
    primes above 3 fall on 4 angles: 1, 5, 7, 11 o'clock). ``kind="vogel"``: the golden angle times the
    token's prime *rank* ``r + 1`` -- every token gets a distinct, evenly spread angle. Used by the
    lattice attention bias ``B_ij = cos(phi_h (theta_i - theta_j))`` (see :func:`angle_bias`).
    """
    if kind not in ANGLE_KINDS:
        raise ValueError(f"kind must be one of {ANGLE_KINDS}, got {kind!r}")
    p = token_primes(vocab_size, order)                                # (V,)
    if kind == "clock":
        m = check_int("modulus", modulus, 1)
        return 2.0 * np.pi * np.mod(p, m) / m
    V = p.size
    rank = np.empty(V, dtype=np.int64)
    rank[np.argsort(p, kind="stable")] = np.arange(1, V + 1)           # prime p_r -> r
    return vogel_angle(rank)


def angle_bias(theta, phi) -> np.ndarray:
    """Return ``cos(phi_h (theta_i - theta_j))``: ``(T, T)`` for a scalar ``phi``, ``(H, T, T)`` for ``(H,)``.

    ``theta`` is ``(T,)`` (the angles of the tokens in a sequence). The result is symmetric with ones on
    the diagonal; it is the bias added to attention scores as ``beta * B``.
    """
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim != 1:
        raise ValueError(f"theta must be 1-D, got shape {theta.shape}")
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim > 1:
        raise ValueError(f"phi must be a scalar or 1-D, got shape {phi.shape}")
    diff = theta[:, None] - theta[None, :]                             # (T, T)
    return np.cos(phi[..., None, None] * diff)                         # (T, T) or (H, T, T)


# ------------------------------------------------------------------------ clocks of residues mod m
def fourier_frequencies(modulus) -> list:
    """The columns of :func:`fourier_features` as (k, "cos" | "sin"): k = 1 .. m // 2, without the
    sine of k = m / 2 for even m (it is 0 at every residue)."""
    m = check_int("modulus", modulus, 2)
    cols = []
    for k in range(1, m // 2 + 1):
        cols.append((k, "cos"))
        if 2 * k != m:
            cols.append((k, "sin"))
    return cols


def fourier_features(values, modulus) -> np.ndarray:
    """The clock of every frequency: ``cos, sin (2 pi k v / m)`` for k = 1 .. m // 2, float64 of shape
    ``(n, m - 1)`` (columns as :func:`fourier_frequencies` lists them).

    Each column has unit RMS over the m residues (the cosines and sines are scaled by sqrt 2; the
    cosine of k = m / 2 is +-1 already), so over ``values = 0 .. m - 1`` the columns are orthogonal with
    ``F^T F = m I``; with the constant column they would be the whole discrete Fourier basis, rank m.
    """
    v = np.mod(check_int_array("values", values).reshape(-1), check_int("modulus", modulus, 2))  # (n,)
    m = int(modulus)
    cols = []
    for k, kind in fourier_frequencies(m):
        angle = 2.0 * np.pi * k * v / m                                   # (n,)
        scale = 1.0 if 2 * k == m else np.sqrt(2.0)
        cols.append(scale * (np.cos(angle) if kind == "cos" else np.sin(angle)))
    return np.stack(cols, axis=1) if cols else np.zeros((v.size, 0))     # (n, m - 1)


def prime_power_factors(n) -> list:
    """The prime powers whose product is n, ascending by prime: 60 -> [4, 3, 5], 12 -> [4, 3], 7 -> [7]."""
    n = check_int("n", n, 2)
    out, p = [], 2
    while p * p <= n:
        if n % p == 0:
            q = 1
            while n % p == 0:
                n //= p
                q *= p
            out.append(q)
        p += 1
    if n > 1:
        out.append(n)
    return out


def crt_clock_features(values, modulus) -> np.ndarray:
    """One clock per prime power q of m (Chinese remainder theorem): the :func:`fourier_features` of
    ``v mod q`` for each q, side by side, shape ``(n, sum(q - 1))``: 9 columns for m = 60 = 4 * 3 * 5,
    5 for m = 12 = 4 * 3. The residues mod the q determine v mod m, and each of these clocks is a subset of
    the frequencies of the clock mod m (the mod-q clock's frequency j is m j / q there)."""
    v = check_int_array("values", values).reshape(-1)                       # (n,)
    return np.concatenate([fourier_features(v, q) for q in prime_power_factors(modulus)], axis=1)


def random_features(shape, rng) -> np.ndarray:
    """A fixed random Gaussian feature matrix of ``shape`` (n, k), each column scaled to unit RMS: the
    control for a structured F of the same shape (rank min(n, k) with probability 1)."""
    G = rng.standard_normal(shape)                                       # (n, k)
    return G / np.sqrt(np.mean(G * G, axis=0))
