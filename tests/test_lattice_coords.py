"""Tests for cllm.lattice.coords: Ulam and Vogel spirals, clock and log features."""
import numpy as np
import pytest

from cllm.lattice import coords as C
from cllm.lattice.primes import first_primes


def test_ulam_first_points():
    pts = C.ulam_coords(10)
    assert pts.shape == (10, 2) and pts.dtype == np.int64
    assert pts.tolist() == [[0, 0], [1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1],
                            [2, -1]]


def test_ulam_unit_steps_and_distinct_points():
    n = 100000
    pts = C.ulam_coords(n)
    steps = np.abs(np.diff(pts, axis=0)).sum(axis=1)        # Manhattan distance of consecutive integers
    assert np.all(steps == 1)
    keys = pts[:, 0] * 10**6 + pts[:, 1]
    assert np.unique(keys).size == n
    ring = C.ulam_ring(np.arange(1, n + 1))
    assert np.array_equal(ring, np.abs(pts).max(axis=1))    # ring = Chebyshev norm
    odd = np.arange(1, 301, 2)                               # (2r+1)^2 ends ring r at (r, -r)
    r = (odd - 1) // 2
    assert np.array_equal(C.ulam_xy(odd**2), np.stack([r, -r], axis=1))


def test_ulam_xy_matches_ulam_coords_and_shapes():
    pts = C.ulam_coords(500)
    vals = np.array([[1, 7], [250, 500]])
    assert C.ulam_xy(vals).shape == (2, 2, 2)
    assert np.array_equal(C.ulam_xy(vals)[1, 1], pts[499])
    assert C.ulam_coords(0).shape == (0, 2)
    with pytest.raises(ValueError, match="^n "):
        C.ulam_coords(-1)
    with pytest.raises(ValueError, match="^values "):
        C.ulam_xy([0, 3])


def test_vogel_radius_and_golden_angle():
    pts = C.vogel_coords(1000)
    k = np.arange(1, 1001)
    assert pts.shape == (1000, 2)
    assert np.allclose(np.hypot(pts[:, 0], pts[:, 1]), np.sqrt(k))
    ang = np.arctan2(pts[:, 1], pts[:, 0])
    step = np.mod(np.diff(ang), 2 * np.pi)
    assert np.allclose(step, C.GOLDEN_ANGLE, atol=1e-9)
    assert abs(C.GOLDEN_ANGLE - 2 * np.pi * (1 - 1 / C.PHI)) < 1e-12   # 137.5 degrees
    with pytest.raises(ValueError, match="^n "):
        C.vogel_coords(3.5)


def test_clock_features_on_the_unit_circle():
    p = first_primes(1000)
    F = C.clock_features(p, (12, 60))
    assert F.shape == (1000, 4)
    assert np.allclose(F[:, 0] ** 2 + F[:, 1] ** 2, 1.0)
    assert np.allclose(F[:, 2] ** 2 + F[:, 3] ** 2, 1.0)
    # primes above 3 sit on four 12-clock positions only
    assert np.unique(np.round(F[2:, :2], 12), axis=0).shape[0] == 4
    assert np.allclose(C.clock_angle([0, 3, 6, 9], 12), [0, np.pi / 2, np.pi, 3 * np.pi / 2])


def test_log_prime_features_bounded_and_monotone():
    p = first_primes(2000)
    L = C.log_prime_features(p, n_freq=5)
    assert L.shape == (2000, 11)
    assert np.all(np.diff(L[:, 0]) > 0) and L[-1, 0] == 1.0
    assert np.allclose(L[:, 0], np.log(p) / np.log(p[-1]))
    assert np.all(np.abs(L) <= 1.0)
    assert np.allclose(L[:, 1] ** 2 + L[:, 2] ** 2, 1.0)
    assert np.all(np.isfinite(C.log_prime_features([2**62], 3)))
