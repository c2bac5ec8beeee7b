"""Textbook Lenstra-Lenstra-Lovasz lattice reduction in exact rational arithmetic.

Rows of ``B`` are the basis vectors. All Gram-Schmidt quantities are ``fractions.Fraction``, so the
reduction conditions are checked exactly (no floating-point tolerance):

- size reduction: ``|mu_ij| <= 1/2`` for ``j < i``;
- Lovasz condition: ``|b*_k|^2 >= (delta - mu_{k,k-1}^2) |b*_{k-1}|^2`` with ``delta = 3/4`` by default.

The algorithm is Cohen's "A Course in Computational Algebraic Number Theory", Algorithm 2.6.3, with the
Gram-Schmidt data updated in place on each swap. It is meant for small bases (tens of vectors): loops are
plain Python.

``integer_relation`` puts LLL to work: it finds small integers ``a`` with ``a . x ~ 0`` for real ``x``.
With logs of integers, a relation exists exactly when the integers are multiplicatively dependent
(``log 6 - log 2 - log 3 = 0``); the logs of distinct primes have none (unique factorisation).
"""
from __future__ import annotations

from fractions import Fraction
from numbers import Integral, Rational, Real

import numpy as np

from .._validate import is_int

_INT64_MAX = 2**63 - 1


# --------------------------------------------------------------------------------------------------
# input and output
# --------------------------------------------------------------------------------------------------
def _as_int_rows(B, name: str = "B") -> list[list[int]]:
    """Return ``B`` as a list of rows of Python ints, or raise ``ValueError`` naming ``name``."""
    if isinstance(B, np.ndarray):
        arr = B
    else:
        try:
            arr = np.array(B, dtype=object)
        except ValueError:
            raise ValueError(f"{name} must be a 2-D array of integers (ragged rows?)") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (rows are basis vectors), got shape {arr.shape}")
    rows = []
    for row in arr.tolist():
        out = []
        for v in row:
            if isinstance(v, bool):
                raise ValueError(f"{name} must hold integers, got a bool")
            if isinstance(v, Integral):
                out.append(int(v))
            elif isinstance(v, Real) and float(v).is_integer():
                out.append(int(v))                    # integral floats / Fractions are accepted
            else:
                raise ValueError(f"{name} must hold integers, got {v!r}")
        rows.append(out)
    return rows


def _to_array(rows: list[list[int]]) -> np.ndarray:
    """Return integer rows as int64 if every entry fits, else as an object array of Python ints."""
    if all(-_INT64_MAX - 1 <= v <= _INT64_MAX for row in rows for v in row):
        return np.array(rows, dtype=np.int64)
    out = np.empty((len(rows), len(rows[0])), dtype=object)
    for i, row in enumerate(rows):
        out[i, :] = row
    return out


def _check_delta(delta) -> Fraction:
    """Return ``delta`` as an exact Fraction in ``(1/4, 1)``; floats are read by their shortest decimal form."""
    if isinstance(delta, bool) or not isinstance(delta, (Real, Rational)):
        raise ValueError(f"delta must be a number in (1/4, 1), got {delta!r}")
    d = Fraction(str(float(delta))) if isinstance(delta, float) else Fraction(delta)
    if not Fraction(1, 4) < d < 1:
        raise ValueError(f"delta must lie in (1/4, 1), got {delta!r}")
    return d


def _dot(u, v):
    """Exact dot product of two sequences (ints or Fractions)."""
    return sum((a * b for a, b in zip(u, v)), 0)


# --------------------------------------------------------------------------------------------------
# Gram-Schmidt
# --------------------------------------------------------------------------------------------------
def _gram_schmidt_rows(rows: list[list[int]]):
    """Exact Gram-Schmidt of integer rows: ``(bstar, mu, norms)`` as Fractions; raises if dependent."""
    n = len(rows)
    bstar: list[list[Fraction]] = []
    mu = [[Fraction(0)] * n for _ in range(n)]
    norms: list[Fraction] = []
    for i in range(n):
        v = [Fraction(x) for x in rows[i]]
        for j in range(i):
            mu[i][j] = _dot(rows[i], bstar[j]) / norms[j]
            v = [a - mu[i][j] * b for a, b in zip(v, bstar[j])]
        mu[i][i] = Fraction(1)
        nv = _dot(v, v)
        if nv == 0:
            raise ValueError(f"B must have linearly independent rows (row {i} depends on rows before it)")
        bstar.append(v)
        norms.append(nv)
    return bstar, mu, norms


def gram_schmidt(B):
    """Return the exact Gram-Schmidt data of the rows of ``B``: ``(Bstar, mu)``.

    ``Bstar`` is an ``(n, d)`` object array of Fractions with orthogonal rows and ``B = mu @ Bstar``;
    ``mu`` is the ``(n, n)`` lower unit-triangular object array of Fractions with
    ``mu[i, j] = <b_i, b*_j> / <b*_j, b*_j>``. Raises ``ValueError`` if the rows are dependent.
    """
    rows = _as_int_rows(B)
    bstar, mu, _ = _gram_schmidt_rows(rows)
    Bs = np.empty((len(rows), len(rows[0])), dtype=object)
    M = np.empty((len(rows), len(rows)), dtype=object)
    for i in range(len(rows)):
        Bs[i, :] = bstar[i]
        M[i, :] = mu[i]
    return Bs, M


def is_lll_reduced(B, delta=0.75) -> bool:
    """Return True when the rows of ``B`` are size-reduced and satisfy the Lovasz condition (exactly)."""
    d = _check_delta(delta)
    rows = _as_int_rows(B)
    _, mu, norms = _gram_schmidt_rows(rows)
    n = len(rows)
    for i in range(n):
        for j in range(i):
            if abs(mu[i][j]) > Fraction(1, 2):
                return False
    for k in range(1, n):
        if norms[k] < (d - mu[k][k - 1] ** 2) * norms[k - 1]:
            return False
    return True


# --------------------------------------------------------------------------------------------------
# LLL
# --------------------------------------------------------------------------------------------------
def lll_reduce(B, delta=0.75):
    """LLL-reduce the integer basis ``B`` (rows are basis vectors), exactly. Returns ``(reduced, U)``.

    ``reduced = U @ B`` with ``U`` an integer unimodular matrix (``det U = +-1``), so both span the same
    lattice; ``reduced`` is size-reduced (``|mu_ij| <= 1/2``) and satisfies the Lovasz condition for
    ``delta`` (default 3/4; floats are read by their decimal repr, so 0.99 means 99/100). The first row is
    within a factor ``2^((n-1)/2)`` of the shortest lattice vector. Size reduction subtracts the nearest
    integer to ``mu`` (exact ``round``, ties to even), which reproduces the textbook example
    ``[[1,1,1],[-1,0,2],[3,5,6]] -> [[0,1,0],[1,0,1],[-1,0,2]]``. Arrays are int64 when every entry fits,
    otherwise object arrays of Python ints. Raises ``ValueError`` for non-integer entries, a ragged or
    empty ``B``, ``delta`` outside (1/4, 1), or linearly dependent rows.
    """
    d = _check_delta(delta)
    b = _as_int_rows(B)
    n = len(b)
    U = [[int(i == j) for j in range(n)] for i in range(n)]
    _, mu, norms = _gram_schmidt_rows(b)                 # raises on dependent rows
    def size_reduce(k: int, j: int) -> None:
        """Subtract round(mu_kj) times row j from row k (and update mu row k)."""
        q = round(mu[k][j])                            # nearest integer, exact; ties go to even
        if q == 0:
            return
        b[k] = [x - q * y for x, y in zip(b[k], b[j])]
        U[k] = [x - q * y for x, y in zip(U[k], U[j])]
        for l in range(j):
            mu[k][l] -= q * mu[j][l]
        mu[k][j] -= q

    k = 1
    while k < n:
        size_reduce(k, k - 1)
        if norms[k] >= (d - mu[k][k - 1] ** 2) * norms[k - 1]:
            for j in range(k - 2, -1, -1):
                size_reduce(k, j)
            k += 1
            continue
        # Lovasz condition fails: swap b_{k-1} and b_k, update Gram-Schmidt data exactly (Cohen 2.6.3)
        m = mu[k][k - 1]
        Bk = norms[k] + m * m * norms[k - 1]
        mu[k][k - 1] = m * norms[k - 1] / Bk
        norms[k] = norms[k - 1] * norms[k] / Bk
        norms[k - 1] = Bk
        b[k - 1], b[k] = b[k], b[k - 1]
        U[k - 1], U[k] = U[k], U[k - 1]
        for j in range(k - 1):
            mu[k - 1][j], mu[k][j] = mu[k][j], mu[k - 1][j]
        for i in range(k + 1, n):
            t = mu[i][k]
            mu[i][k] = mu[i][k - 1] - m * t
            mu[i][k - 1] = t + mu[k][k - 1] * mu[i][k]
        k = max(k - 1, 1)
    return _to_array(b), _to_array(U)


# --------------------------------------------------------------------------------------------------
# an application: integer relations
# --------------------------------------------------------------------------------------------------
def integer_relation(x, precision=10):
    """Find small integers ``a`` (not all zero) with ``a . x ~ 0`` by LLL on the embedding lattice.

    The lattice has basis rows ``[e_i | round(10^precision * x_i)]`` (identity next to the scaled reals).
    A lattice vector is ``[a | sum_i a_i round(C x_i)]``; it is short only if ``a`` is small *and*
    ``a . x`` is within about ``|a| / C`` of zero, so the first LLL-reduced row gives a relation.
    Returns ``(a, residual)``: ``a`` as an int64 array (sign chosen so the first non-zero entry is
    positive) and ``residual = float(a . x)``. If no true relation exists, ``a`` has entries of size about
    ``C^(1/n)`` and the residual is not small: check both.

    ``x`` may hold floats, Fractions or Decimals; with floats keep ``precision`` below about 15.
    """
    from decimal import Decimal

    if not is_int(precision) or not 1 <= precision <= 300:
        raise ValueError(f"precision must be an integer in [1, 300], got {precision!r}")
    xs = list(np.asarray(x, dtype=object).ravel()) if not isinstance(x, (list, tuple)) else list(x)
    if len(xs) < 2:
        raise ValueError(f"x must hold at least two numbers, got {len(xs)}")
    fr = []
    for v in xs:
        if isinstance(v, Decimal):
            fr.append(Fraction(v))
        elif isinstance(v, (Real, Rational)) and not isinstance(v, bool) and np.isfinite(float(v)):
            fr.append(Fraction(v))
        else:
            raise ValueError(f"x must hold finite real numbers, got {v!r}")
    n = len(fr)
    C = 10 ** int(precision)
    scaled = [round(v * C) for v in fr]                 # exact rounding of the scaled reals
    basis = [[int(i == j) for j in range(n)] + [scaled[i]] for i in range(n)]   # (n, n + 1)
    reduced, _ = lll_reduce(basis)
    a = [int(v) for v in reduced[0][:n]]
    first = next((v for v in a if v != 0), 1)
    if first < 0:
        a = [-v for v in a]
    residual = float(sum(Fraction(ai) * v for ai, v in zip(a, fr)))
    return np.array(a, dtype=np.int64), residual
