"""Similarities between lattice codes: a GCD similarity on integers and a Gaussian kernel on coordinates.

``gcd_similarity(a, b) = log gcd(a, b) / log min(a, b)`` measures how much of the smaller code's "size"
(in the log domain) is shared with the other code. It lies in ``[0, 1]``, is symmetric, is exactly 1 when
one code divides the other and 0 when they are coprime.

A caution the course makes: on *distinct primes* the gcd is always 1, so the similarity is an equality
test (1 on the diagonal, 0 elsewhere) -- the original code's flaw. Composite codes (root prime x affix
prime, see :mod:`cllm.lattice.codes`) are what make it informative.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_int_array


def gcd_similarity(a, b):
    """Return ``log gcd(a, b) / log min(a, b)`` for positive integers, broadcasting numpy-style.

    Values lie in ``[0, 1]``; the function is symmetric; it is exactly 1.0 when one argument divides the
    other and exactly 0.0 when they are coprime. The code 1 has no prime factors, so it shares nothing:
    ``gcd_similarity(1, b) = 0`` for ``b > 1``, and ``gcd_similarity(1, 1) = 1`` (every code is fully
    similar to itself). Scalars in, numpy float64 scalar out; arrays in, float64 array out.
    """
    a = check_int_array("a", a, lo=1)
    b = check_int_array("b", b, lo=1)
    g = np.gcd(a, b)                                         # broadcast shape
    m = np.minimum(a, b)                                     # broadcast shape
    big = m > 1
    num = np.log(g.astype(np.float64))
    den = np.log(np.where(big, m, 2).astype(np.float64))     # placeholder 2 where min == 1 (no 0/0)
    s = np.where(big, num / den, (a == b).astype(np.float64))
    return s[()] if s.ndim == 0 else s


def gcd_similarity_matrix(codes, others=None) -> np.ndarray:
    """Return the pairwise GCD similarity matrix: ``(n, n)`` for ``codes``, or ``(n, m)`` against ``others``."""
    a = check_int_array("codes", codes, lo=1).reshape(-1)          # (n,)
    b = a if others is None else check_int_array("others", others, lo=1).reshape(-1)   # (m,)
    return gcd_similarity(a[:, None], b[None, :])                    # (n, m)


def geometric_kernel(xa, xb, scale=1.0) -> np.ndarray:
    """Return the Gaussian kernel ``exp(-|x_a - x_b|^2 / scale^2)`` over the last axis (coordinates).

    ``xa`` and ``xb`` broadcast against each other over the leading axes: shapes ``(..., d)`` give
    ``(...)``. Values lie in ``(0, 1]``; equal points give exactly 1.
    """
    scale = _check_scale(scale)
    xa = np.asarray(xa, dtype=np.float64)
    xb = np.asarray(xb, dtype=np.float64)
    if xa.ndim == 0 or xb.ndim == 0:
        raise ValueError("xa and xb must have a coordinate axis (shape (..., d))")
    d2 = np.sum((xa - xb) ** 2, axis=-1)                            # (...)
    return np.exp(-d2 / scale**2)


def geometric_kernel_matrix(xa, xb=None, scale=1.0) -> np.ndarray:
    """Return the pairwise Gaussian kernel matrix: ``xa (n, d)``, ``xb (m, d)`` (default ``xa``) -> ``(n, m)``.

    Uses ``|x|^2 + |y|^2 - 2 x.y`` (one matmul, no ``(n, m, d)`` temporary), clipped at 0; when ``xb`` is
    omitted the diagonal is exactly 1.
    """
    scale = _check_scale(scale)
    xa = np.asarray(xa, dtype=np.float64)
    if xa.ndim != 2:
        raise ValueError(f"xa must have shape (n, d), got {xa.shape}")
    same = xb is None
    xb = xa if same else np.asarray(xb, dtype=np.float64)
    if xb.ndim != 2 or xb.shape[1] != xa.shape[1]:
        raise ValueError(f"xb must have shape (m, {xa.shape[1]}), got {xb.shape}")
    sq_a = np.sum(xa * xa, axis=1)                                   # (n,)
    sq_b = np.sum(xb * xb, axis=1)                                   # (m,)
    d2 = np.maximum(sq_a[:, None] + sq_b[None, :] - 2.0 * xa @ xb.T, 0.0)   # (n, m)
    if same:
        np.fill_diagonal(d2, 0.0)
    return np.exp(-d2 / scale**2)                                    # (n, m)


def _check_scale(scale) -> float:
    """Return ``scale`` as a positive finite float, or raise ``ValueError``."""
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a positive number, got {scale!r}") from None
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return s
