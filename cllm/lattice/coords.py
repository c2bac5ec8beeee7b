"""Coordinates on the lattice: the square Ulam spiral, the golden-angle (Vogel) spiral, clock rings, logs.

All functions are closed-form and vectorised over numpy arrays (no Python loop over the integers).

Conventions
-----------
- Ulam spiral: the integer 1 sits at the origin (0, 0), 2 at (1, 0), 3 at (1, 1), 4 at (0, 1), 5 at
  (-1, 1), ... turning counter-clockwise. ``ulam_coords(n)`` returns the points of 1..n, so row ``i``
  holds the integer ``i + 1``. Ring ``r`` (the square of side ``2r + 1``) holds ``(2r-1)^2 + 1 .. (2r+1)^2``.
- Vogel spiral: position ``k`` has radius ``sqrt(k)`` and angle ``2 pi k / phi^2`` (the golden angle,
  about 137.5 degrees, times ``k``); ``vogel_coords(n)`` returns positions 1..n.
- Clock: an integer ``v`` sits at angle ``2 pi (v mod m) / m`` on a clock with ``m`` positions.
"""
from __future__ import annotations

import math

import numpy as np

from .._validate import check_int, check_int_array

PHI = (1.0 + math.sqrt(5.0)) / 2.0                  # golden ratio
GOLDEN_TURN = 1.0 / PHI**2                          # golden angle as a fraction of a full turn (0.381966)
GOLDEN_ANGLE = 2.0 * math.pi * GOLDEN_TURN          # radians (2.39996...)


# --------------------------------------------------------------------------------------------------
# Ulam spiral
# --------------------------------------------------------------------------------------------------
def _isqrt(x: np.ndarray) -> np.ndarray:
    """Exact integer square root of a non-negative int64 array (float estimate, then corrected)."""
    s = np.floor(np.sqrt(x.astype(np.float64))).astype(np.int64)
    s -= (s * s > x)                                  # estimate one too high
    s += ((s + 1) * (s + 1) <= x)                     # estimate one too low
    return s


def ulam_ring(values) -> np.ndarray:
    """Return the Ulam ring of each positive integer: 0 for 1, 1 for 2..9, 2 for 10..25, ...

    Ring ``r`` is the square of side ``2r + 1`` around the origin; its points have Chebyshev norm ``r``.
    """
    v = check_int_array("values", values, lo=1)
    return (_isqrt(v - 1) + 1) // 2


def ulam_xy(values) -> np.ndarray:
    """Return the Ulam-spiral point of each positive integer, int64 of shape ``values.shape + (2,)``.

    Closed form: with ring ``r`` and offset ``t = v - (2r-1)^2`` in ``1 .. 8r``, the four sides of the ring
    are walked up the right edge, left along the top, down the left edge and right along the bottom.
    """
    v = check_int_array("values", values, lo=1)
    r = (_isqrt(v - 1) + 1) // 2                       # ring
    t = v - (2 * r - 1) ** 2                           # 1 .. 8r on ring r (unused for r = 0)
    side = np.where(r > 0, (t - 1) // np.maximum(2 * r, 1), 0)   # 0 right, 1 top, 2 left, 3 bottom
    u = t - 2 * r * side                               # 1 .. 2r along the side
    x = np.select([side == 0, side == 1, side == 2], [r, r - u, -r], -r + u)
    y = np.select([side == 0, side == 1, side == 2], [-r + u, r, r - u], -r)
    x = np.where(r == 0, 0, x)
    y = np.where(r == 0, 0, y)
    return np.stack([x, y], axis=-1).astype(np.int64)  # values.shape + (2,)


def ulam_coords(n) -> np.ndarray:
    """Return the Ulam-spiral points of the integers 1..n as an int64 array of shape ``(n, 2)``.

    Row ``i`` is the integer ``i + 1``: consecutive integers are one unit step apart (Manhattan distance 1)
    and no two integers share a point.
    """
    n = check_int("n", n, 0)
    return ulam_xy(np.arange(1, n + 1, dtype=np.int64)).reshape(n, 2)   # (n, 2)


# --------------------------------------------------------------------------------------------------
# Vogel (golden-angle) spiral
# --------------------------------------------------------------------------------------------------
def vogel_angle(values) -> np.ndarray:
    """Return the Vogel angle ``2 pi k / phi^2`` of each position ``k``, reduced to ``[0, 2 pi)``.

    The reduction takes the fractional part of ``k / phi^2`` first, so large ``k`` keep full precision.
    """
    k = np.asarray(values, dtype=np.float64)
    return 2.0 * np.pi * np.mod(k * GOLDEN_TURN, 1.0)


def vogel_xy(values) -> np.ndarray:
    """Return the golden-angle spiral point of each position ``k >= 0``: float64, ``values.shape + (2,)``.

    Radius ``sqrt(k)``, angle ``2 pi k / phi^2``: equal areas hold equal numbers of points (the sunflower).
    """
    k = np.asarray(values, dtype=np.float64)
    if k.size and (not np.all(np.isfinite(k)) or k.min() < 0):
        raise ValueError("values must be finite and >= 0")
    radius = np.sqrt(k)
    angle = vogel_angle(k)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)   # values.shape + (2,)


def vogel_coords(n) -> np.ndarray:
    """Return the golden-angle spiral points of positions 1..n as a float64 array of shape ``(n, 2)``."""
    n = check_int("n", n, 0)
    return vogel_xy(np.arange(1, n + 1, dtype=np.float64)).reshape(n, 2)   # (n, 2)


# --------------------------------------------------------------------------------------------------
# clock rings and logs
# --------------------------------------------------------------------------------------------------
def clock_angle(values, modulus=12) -> np.ndarray:
    """Return the clock angle ``2 pi (v mod m) / m`` of each integer (float64, same shape as values)."""
    modulus = check_int("modulus", modulus, 1)
    v = check_int_array("values", values)
    return 2.0 * np.pi * np.mod(v, modulus) / modulus


def clock_features(values, moduli=(12, 60)) -> np.ndarray:
    """Return ``(cos, sin)`` of the clock angle for each modulus: float64 of shape ``(n, 2 * len(moduli))``.

    Columns are ``cos_m1, sin_m1, cos_m2, sin_m2, ...``; every entry lies in ``[-1, 1]``.
    """
    v = check_int_array("values", values).reshape(-1)                    # (n,)
    moduli = tuple(moduli)
    if not moduli:
        raise ValueError("moduli must name at least one modulus")
    cols = []
    for m in moduli:
        angle = clock_angle(v, m)                                     # (n,)
        cols += [np.cos(angle), np.sin(angle)]
    return np.stack(cols, axis=1)                                     # (n, 2 * len(moduli))


def log_frequencies(n_freq) -> np.ndarray:
    """Return the angular frequencies ``omega_j = pi j^(3/2)``, ``j = 1 .. n_freq``, used on ``log v``.

    Super-linear spacing keeps the columns ``cos(omega_j log v), sin(omega_j log v)`` well conditioned:
    for the first ``n >= k`` primes the resulting ``n x k`` feature matrices have condition numbers below
    about ``10^4`` up to ``k = 512`` (linear spacing loses rank once ``k`` passes about 60).
    """
    n_freq = check_int("n_freq", n_freq, 0)
    return np.pi * np.arange(1, n_freq + 1, dtype=np.float64) ** 1.5


def log_prime_features(values, n_freq=0) -> np.ndarray:
    """Return log features of positive integers: float64 of shape ``(n, 1 + 2 * n_freq)``.

    Column 0 is ``u = log v / log v_max`` in ``[0, 1]``: strictly increasing in ``v`` and non-zero for every
    ``v >= 2`` (all zeros when ``v_max == 1``). Then ``cos(omega_j log v), sin(omega_j log v)`` for the frequencies of
    :func:`log_frequencies`: smooth functions of ``log v``, all in ``[-1, 1]``, and independent of the
    set. Everything stays in the log domain, so nothing overflows.
    """
    v = check_int_array("values", values, lo=1).reshape(-1)         # (n,)
    omega = log_frequencies(n_freq)                                   # (n_freq,)
    logv = np.log(v.astype(np.float64))                               # (n,)
    if v.size == 0:
        return np.zeros((0, 1 + 2 * omega.size))
    top = logv.max()
    u = logv / top if top > 0 else np.zeros_like(logv)               # (n,) in [0, 1]
    phase = logv[:, None] * omega[None, :]                            # (n, n_freq)
    out = np.empty((v.size, 1 + 2 * omega.size))                      # (n, 1 + 2 n_freq)
    out[:, 0] = u
    out[:, 1::2] = np.cos(phase)
    out[:, 2::2] = np.sin(phase)
    return out
