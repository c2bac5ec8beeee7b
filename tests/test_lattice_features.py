"""Tests for cllm.lattice.features: the fixed prime feature map, token primes and angles, angle bias."""
import numpy as np
import pytest

from cllm.lattice import features as Fm
from cllm.lattice.codes import composite_codes
from cllm.lattice.primes import first_primes


def check_feature_matrix(F, n, k):
    assert F.shape == (n, k) and F.dtype == np.float64
    assert np.all(np.isfinite(F))
    assert np.all(np.abs(F).sum(axis=1) > 0)                          # no zero rows
    assert np.unique(F, axis=0).shape[0] == n                          # no duplicate rows
    assert np.linalg.matrix_rank(F) == min(n, k)                       # full column rank when n >= k


@pytest.mark.parametrize("k", [1, 4, 9, 10, 32, 64])
def test_prime_features_full_rank_from_n_equal_k(k):
    for n in sorted({k, k + 1, 2 * k, 300}):
        F = Fm.prime_features(first_primes(n), k)
        check_feature_matrix(F, n, k)
        assert np.allclose(np.sqrt(np.mean(F * F, axis=0)), 1.0)       # unit RMS columns (default)


def test_normalisation_modes():
    p = first_primes(500)
    raw = Fm.prime_features(p, 32, normalize="none")
    assert np.all(np.abs(raw) <= 1.0)
    std = Fm.prime_features(p, 32, normalize="standard")
    assert np.allclose(std.mean(axis=0), 0.0, atol=1e-12) and np.allclose(std.std(axis=0), 1.0)
    rms = Fm.prime_features(p, 32)
    assert np.allclose(rms, raw / np.sqrt(np.mean(raw * raw, axis=0)))
    with pytest.raises(ValueError, match="^normalize "):
        Fm.prime_features(p, 8, normalize="max")


def test_column_order_matches_docstring():
    p = first_primes(200)
    raw = Fm.prime_features(p, 12, normalize="none")
    assert np.allclose(raw[:, 0], np.log(p) / np.log(p[-1])) and raw[-1, 0] == 1.0
    assert np.allclose(raw[:, 1], np.cos(2 * np.pi * (p % 12) / 12))
    assert np.allclose(raw[:, 4], np.sin(2 * np.pi * (p % 60) / 60))
    assert np.allclose(np.hypot(raw[:, 5], raw[:, 6]), np.sqrt(p / p.max()))
    assert np.allclose(raw[:, 9], np.cos(np.pi * np.log(p)))


def test_no_original_defect_for_10000_tokens():
    # the seed's embedding zeroed rows t = 3, 9 (mod 12) and had rank 60 for 10000 x 512
    F = Fm.token_features(10000, k=128)
    t = np.arange(10000)
    rows = F[(t % 12 == 3) | (t % 12 == 9)]
    assert rows.shape[0] == 1667 and np.all(np.abs(rows).sum(axis=1) > 0)
    assert np.all(np.isfinite(F))
    assert np.linalg.matrix_rank(F) == 128 > 60
    eig = np.linalg.eigvalsh(F.T @ F)                  # (128,) squared singular values, ascending
    assert np.sqrt(eig[-1] / eig[0]) < 100               # well conditioned, not just full rank


def test_prime_features_on_composite_codes():
    stems = ["walk", "talk", "jump", "play", "work", "read", "help", "turn"]
    words = [s + x for s in stems for x in ("", "s", "ed", "ing", "er")]
    codes = np.array(sorted(composite_codes(words).values()))
    check_feature_matrix(Fm.prime_features(codes, 32), codes.size, 32)


def test_prime_features_bad_input():
    with pytest.raises(ValueError, match="^k "):
        Fm.prime_features([2, 3, 5], 0)
    with pytest.raises(ValueError, match="^primes_or_codes "):
        Fm.prime_features([2, 0, 5], 4)
    with pytest.raises(ValueError, match="^primes_or_codes "):
        Fm.prime_features([[2, 3]], 4)


def test_token_primes_by_frequency_rank():
    assert np.array_equal(Fm.token_primes(6), [2, 3, 5, 7, 11, 13])
    order = np.array([4, 0, 5, 1, 3, 2])          # token 4 most frequent
    tp = Fm.token_primes(6, order)
    assert tp[4] == 2 and tp[0] == 3 and tp[2] == 13
    assert sorted(tp.tolist()) == [2, 3, 5, 7, 11, 13]
    with pytest.raises(ValueError, match="^order "):
        Fm.token_primes(6, [0, 1, 2, 3, 4, 4])
    with pytest.raises(ValueError, match="^vocab_size "):
        Fm.token_primes(0)


def test_token_angles():
    clock = Fm.token_angles(1000)
    assert clock.shape == (1000,) and np.all((clock >= 0) & (clock < 2 * np.pi))
    hours = np.round(clock[2:] * 12 / (2 * np.pi)).astype(int)
    assert set(hours.tolist()) == {1, 5, 7, 11}
    vogel = Fm.token_angles(1000, kind="vogel")
    assert np.unique(np.round(vogel, 12)).size == 1000
    order = np.arange(1000)[::-1]
    assert Fm.token_angles(1000, order=order, kind="vogel")[-1] == pytest.approx(vogel[0])
    with pytest.raises(ValueError, match="^kind "):
        Fm.token_angles(10, kind="spiral")


def test_angle_bias():
    theta = Fm.token_angles(50, kind="vogel")[:16]
    B = Fm.angle_bias(theta, np.array([0.0, 1.0, 2.0]))
    assert B.shape == (3, 16, 16)
    assert np.allclose(B, np.swapaxes(B, 1, 2)) and np.allclose(np.diagonal(B, axis1=1, axis2=2), 1.0)
    assert np.all(B[0] == 1.0)                     # phi = 0: no bias structure
    assert np.all(np.abs(B) <= 1.0)
    assert Fm.angle_bias(theta, 1.0).shape == (16, 16)
