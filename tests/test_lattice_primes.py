"""Tests for cllm.lattice.primes: sieve, n-th prime, clock wheel, and the reconstructed broken generator."""
import time

import numpy as np
import pytest

from cllm.lattice import primes as P


def brute_primes(n):
    return [p for p in range(2, n) if all(p % d for d in range(2, int(p**0.5) + 1))]


def test_primes_below_matches_trial_division():
    for n in range(0, 400):
        got = P.primes_below(n)
        assert got.dtype == np.int64
        assert got.tolist() == brute_primes(n), n


def test_primes_below_200000_count_and_speed():
    primes = P.primes_below(200000)
    assert primes.size == 17984
    assert primes[-1] == 199999 and primes[0] == 2
    assert np.all(np.diff(primes) > 0)
    start = time.perf_counter()
    fresh = P._sieve(200000)                     # bypass the memo: time a real sieve
    elapsed = time.perf_counter() - start
    assert np.array_equal(fresh, primes)
    assert elapsed < 0.2                          # a few ms normally; generous for busy machines


def test_primes_below_returns_copies():
    a = P.primes_below(100)
    a[0] = -1
    assert P.primes_below(100)[0] == 2


def test_nth_prime_is_one_based_and_first_primes_agree():
    assert P.nth_prime(1) == 2
    assert P.nth_prime(2) == 3
    assert P.nth_prime(10) == 29
    assert P.nth_prime(1000) == 7919
    assert P.nth_prime(10000) == 104729
    assert P.first_primes(0).size == 0
    first = P.first_primes(3000)
    assert first.size == 3000
    assert np.array_equal(first, P.primes_below(int(first[-1]) + 1))


def test_prime_upper_bound_holds():
    first = P.first_primes(5000)
    bounds = np.array([P.prime_upper_bound(k) for k in range(1, 5001)])
    assert np.all(first <= bounds)


def test_prime_index_and_is_prime():
    first = P.first_primes(500)
    assert np.array_equal(P.prime_index(first), np.arange(1, 501))
    mask = P.is_prime(np.arange(-3, 100))
    assert np.flatnonzero(mask).tolist() == [p + 3 for p in brute_primes(100)]
    with pytest.raises(ValueError, match="prime"):
        P.prime_index([2, 4])


@pytest.mark.parametrize("call, name", [
    (lambda: P.primes_below(-1), "n"),
    (lambda: P.primes_below(2.5), "n"),
    (lambda: P.primes_below(True), "n"),
    (lambda: P.primes_below("10"), "n"),
    (lambda: P.nth_prime(0), "k"),
    (lambda: P.nth_prime(1.0), "k"),
    (lambda: P.first_primes(-2), "k"),
    (lambda: P.geometric_filter_pitfall(-5), "n"),
    (lambda: P.clock_wheel_counts(100, modulus=0), "modulus"),
])
def test_bad_arguments_raise_value_error_naming_them(call, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        call()


def test_clock_wheel_every_prime_above_3_is_1_5_7_11_mod_12():
    primes = P.primes_below(100000)
    residues = P.clock_residues(primes[primes > 3], 12)
    assert set(np.unique(residues).tolist()) == set(P.CLOCK_WHEEL_RESIDUES)
    counts = P.clock_wheel_counts(100000)
    assert sum(counts.values()) == primes.size
    assert counts[2] == 1 and counts[3] == 1
    assert {r for r, c in counts.items() if c > 0} == {1, 2, 3, 5, 7, 11}
    # the four spokes are roughly equally filled (Dirichlet)
    spokes = np.array([counts[r] for r in P.CLOCK_WHEEL_RESIDUES])
    assert spokes.min() > 0.95 * spokes.max()


def test_geometric_filter_pitfall_reproduces_the_seed_log():
    accepted = P.geometric_filter_pitfall(200000)
    primes = P.primes_below(200000)
    assert accepted.size == 23094                     # "Generated 23094 primes"
    assert primes.size == 17984
    composites = accepted[~np.isin(accepted, primes)]
    missed = primes[~np.isin(primes, accepted)]
    assert composites.size == 7376
    assert missed.size == 2266
    assert primes.size - missed.size + composites.size == accepted.size
    assert composites[0] == 4489 == 67**2
    assert 4489 in accepted and 73 not in accepted
    assert missed[:3].tolist() == [73, 103, 163]
    assert np.all(missed % 30 == 13)
    # exactly the primes = 13 mod 30 except the seed primes 13 and 43
    thirteen = primes[(primes % 30 == 13) & (primes > 61)]
    assert np.array_equal(missed, thirteen)
    assert {2, 3, 5, 13, 43, 61}.issubset(set(accepted[:20].tolist()))
    assert 1 not in accepted


def test_pitfall_report_counts():
    rep = P.pitfall_report(200000)
    assert rep["accepted"] == 23094
    assert rep["true_primes"] == 17984
    assert rep["composites_accepted"] == 7376
    assert rep["primes_missed"] == 2266
    assert rep["smallest_composite"] == 4489
    assert rep["first_missed"][:3] == [73, 103, 163]
    assert rep["missed_residues_mod_30"] == [13]
    small = P.pitfall_report(60)                      # below 67 the filter is exact
    assert small["composites_accepted"] == 0 and small["primes_missed"] == 0
