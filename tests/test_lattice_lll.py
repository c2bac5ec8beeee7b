"""Tests for cllm.lattice.lll: exact Gram-Schmidt, LLL reduction, integer relations."""
import math
from fractions import Fraction

import numpy as np
import pytest

from cllm.lattice import lll as L


def exact_det(M):
    """Determinant of a small integer matrix by exact Gaussian elimination (Fractions)."""
    A = [[Fraction(int(x)) for x in row] for row in np.asarray(M, dtype=object).tolist()]
    n, det = len(A), Fraction(1)
    for c in range(n):
        piv = next((r for r in range(c, n) if A[r][c] != 0), None)
        if piv is None:
            return Fraction(0)
        if piv != c:
            A[c], A[piv] = A[piv], A[c]
            det = -det
        det *= A[c][c]
        for r in range(c + 1, n):
            f = A[r][c] / A[c][c]
            A[r] = [x - f * y for x, y in zip(A[r], A[c])]
    return det


def check_reduced(B, R, U, delta=Fraction(3, 4)):
    B = np.asarray(B, dtype=object)
    assert np.array_equal(np.asarray(U, dtype=object).dot(B), np.asarray(R, dtype=object))   # R = U @ B
    assert abs(exact_det(U)) == 1                                                            # unimodular
    Bs, mu = L.gram_schmidt(R)
    n = len(R)
    norms = [sum(x * x for x in Bs[i]) for i in range(n)]
    for i in range(n):
        for j in range(i):
            assert abs(mu[i, j]) <= Fraction(1, 2)                     # size reduced
    for k in range(1, n):
        assert norms[k] >= (delta - mu[k, k - 1] ** 2) * norms[k - 1]  # Lovasz
    assert L.is_lll_reduced(R, delta)


def test_textbook_example():
    B = [[1, 1, 1], [-1, 0, 2], [3, 5, 6]]
    R, U = L.lll_reduce(B)
    assert R.tolist() == [[0, 1, 0], [1, 0, 1], [-1, 0, 2]]
    check_reduced(B, R, U)
    assert abs(exact_det(R)) == abs(exact_det(B)) == 3
    assert not L.is_lll_reduced(B)


def test_gram_schmidt_is_exact():
    B = [[3, 1, 4], [1, 5, 9], [2, 6, 5]]
    Bs, mu = L.gram_schmidt(B)
    assert all(isinstance(x, Fraction) for x in Bs.ravel())
    assert np.array_equal(mu.dot(Bs), np.array(B, dtype=object))                 # B = mu Bstar
    for i in range(3):
        for j in range(i):
            assert sum(a * b for a, b in zip(Bs[i], Bs[j])) == 0               # exactly orthogonal
    assert all(mu[i, i] == 1 for i in range(3)) and mu[0, 1] == 0


@pytest.mark.parametrize("seed", range(6))
def test_random_bases(seed):
    rng = np.random.default_rng(seed)
    n, d = [(3, 3), (4, 4), (5, 5), (3, 6), (4, 7), (6, 6)][seed]
    while True:
        B = rng.integers(-60, 61, size=(n, d))
        if np.linalg.matrix_rank(B) == n:
            break
    for delta in (0.75, 0.99):
        R, U = L.lll_reduce(B, delta=delta)
        check_reduced(B, R, U, Fraction(repr(delta)))
        assert R.dtype == np.int64 and U.dtype == np.int64
        if n == d:
            assert abs(exact_det(R)) == abs(exact_det(B))
        # the first vector is never longer than the shortest input vector times 2^((n-1)/2)
        assert (R[0] ** 2).sum() <= 2 ** (n - 1) * min((B**2).sum(axis=1))


def test_hidden_short_vector_is_found():
    # a lattice with one very short vector (1, 0, 0), disguised by a random unimodular change of basis
    good = np.array([[1, 0, 0], [0, 10, 0], [0, 0, 100]])
    rng = np.random.default_rng(7)
    U0 = np.eye(3, dtype=np.int64)
    for _ in range(12):                                          # random elementary row operations
        i, j = rng.choice(3, size=2, replace=False)
        U0[i] += int(rng.integers(-3, 4)) * U0[j]
    B = U0 @ good
    assert abs(exact_det(U0)) == 1 and np.abs(B).max() > 100
    R, U = L.lll_reduce(B)
    check_reduced(B, R, U)
    # |b1| <= 2^((n-1)/2) lambda_1 = 2, and the only lattice vectors that short are +-(1, 0, 0)
    assert np.abs(R[0]).tolist() == [1, 0, 0]


def test_big_entries_give_object_arrays():
    B = [[10**20, 7], [3 * 10**20 + 1, 10**20]]
    R, U = L.lll_reduce(B)
    assert R.dtype == object and isinstance(R[0, 0], int)
    check_reduced(B, R, U)
    assert abs(exact_det(R)) == abs(exact_det(B))


@pytest.mark.parametrize("B, msg", [
    ([[1, 2], [2, 4]], "linearly independent"),
    ([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], "linearly independent"),
    ([[1.5, 0], [0, 1]], "integers"),
    ([[1, "a"], [0, 1]], "integers"),
    ([], "non-empty"),
    ([[1, 2], [3]], "2-D"),
])
def test_bad_bases(B, msg):
    with pytest.raises(ValueError, match=f"^B .*{msg}"):
        L.lll_reduce(B)


def test_single_vector_and_integral_floats():
    R, U = L.lll_reduce([[1, 2, 3]])
    assert R.tolist() == [[1, 2, 3]] and U.tolist() == [[1]]
    R, U = L.lll_reduce(np.array([[1.0, 1.0, 1.0], [-1.0, 0.0, 2.0], [3.0, 5.0, 6.0]]))
    assert R.tolist() == [[0, 1, 0], [1, 0, 1], [-1, 0, 2]]


def test_bad_delta():
    for delta in (0.25, 1.0, 1.5, "x"):
        with pytest.raises(ValueError, match="^delta "):
            L.lll_reduce([[1, 0], [0, 1]], delta=delta)


def test_integer_relation_logs_of_products():
    a, res = L.integer_relation([math.log(2), math.log(3), math.log(6)], precision=10)
    assert a.tolist() == [1, 1, -1] and abs(res) < 1e-12       # log 2 + log 3 - log 6 = 0
    a, res = L.integer_relation([math.log(p) for p in (2, 3, 5, 7, 10)], precision=12)
    assert a.tolist() == [1, 0, 1, 0, -1] and abs(res) < 1e-12  # log 2 + log 5 = log 10


def test_integer_relation_minimal_polynomial():
    alpha = math.sqrt(2) + math.sqrt(3)
    a, res = L.integer_relation([alpha**i for i in range(5)], precision=10)
    assert a.tolist() == [1, 0, -10, 0, 1]                    # x^4 - 10 x^2 + 1
    assert abs(res) < 1e-9


def test_logs_of_distinct_primes_have_no_small_relation():
    a, res = L.integer_relation([math.log(2), math.log(3), math.log(5)], precision=10)
    assert np.abs(a).max() > 50                                # only a long "relation" fits
    assert abs(res) > 1e-12


def test_integer_relation_bad_arguments():
    with pytest.raises(ValueError, match="^precision "):
        L.integer_relation([1.0, 2.0], precision=0)
    with pytest.raises(ValueError, match="^x "):
        L.integer_relation([1.0])
    with pytest.raises(ValueError, match="^x "):
        L.integer_relation([1.0, float("nan")])
