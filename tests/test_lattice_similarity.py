"""Tests for cllm.lattice.similarity and cllm.lattice.codes: GCD similarity, kernels, composite codes."""
import math

import numpy as np
import pytest

from cllm.lattice import codes as W
from cllm.lattice import similarity as S
from cllm.lattice.primes import first_primes


def test_gcd_similarity_values():
    assert S.gcd_similarity(12, 18) == pytest.approx(math.log(6) / math.log(12))
    assert S.gcd_similarity(6, 35) == 0.0                    # coprime
    assert S.gcd_similarity(7, 91) == 1.0                    # 7 divides 91: exactly 1
    assert S.gcd_similarity(91, 7) == 1.0
    assert S.gcd_similarity(10, 10) == 1.0
    assert S.gcd_similarity(1, 1) == 1.0 and S.gcd_similarity(1, 9) == 0.0 and S.gcd_similarity(9, 1) == 0.0
    assert isinstance(S.gcd_similarity(4, 6), np.floating)


def test_gcd_similarity_broadcasts_and_is_bounded_symmetric():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 5000, size=300)
    M = S.gcd_similarity_matrix(a)
    assert M.shape == (300, 300)
    assert np.all((M >= 0) & (M <= 1))
    assert np.array_equal(M, M.T)
    assert np.all(np.diag(M) == 1.0)
    divides = (a[None, :] % a[:, None] == 0) | (a[:, None] % a[None, :] == 0)
    assert np.all(M[divides] == 1.0)
    coprime = np.gcd(a[:, None], a[None, :]) == 1
    assert np.all(M[coprime & ~divides] == 0.0)
    assert S.gcd_similarity(a[:5, None], a[None, :7]).shape == (5, 7)
    assert S.gcd_similarity_matrix(a[:4], a[:9]).shape == (4, 9)


def test_gcd_similarity_on_distinct_primes_is_an_equality_test():
    M = S.gcd_similarity_matrix(first_primes(50))
    assert np.array_equal(M, np.eye(50))


@pytest.mark.parametrize("a, b, name", [(0, 3, "a"), (3, -2, "b"), (2.5, 3, "a"), ([1, 2], ["x", "y"], "b")])
def test_gcd_similarity_bad_input(a, b, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        S.gcd_similarity(a, b)


def test_geometric_kernel():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 2))
    K = S.geometric_kernel_matrix(X, scale=1.5)
    assert K.shape == (40, 40) and np.allclose(K, K.T) and np.all(np.diag(K) == 1.0)
    assert np.all((K > 0) & (K <= 1))
    direct = S.geometric_kernel(X[:, None, :], X[None, :, :], scale=1.5)
    assert np.allclose(K, direct, atol=1e-12)
    assert S.geometric_kernel([0.0, 0.0], [3.0, 4.0], scale=5.0) == pytest.approx(math.exp(-1.0))
    assert S.geometric_kernel_matrix(X[:3], X[:5], 2.0).shape == (3, 5)
    with pytest.raises(ValueError, match="^scale "):
        S.geometric_kernel_matrix(X, scale=0.0)


def test_split_word():
    assert W.split_word("walking") == ("walk", "ing")
    assert W.split_word("walked") == ("walk", "ed")
    assert W.split_word("nation") == ("nation", "")       # stem would be shorter than MIN_STEM
    assert W.split_word("creation") == ("crea", "tion")
    assert W.split_word("careless") == ("care", "less")  # longest suffix wins over "s"
    for w in ["boxes", "quickly", "the", "", "singer", "kindness"]:
        stem, suffix = W.split_word(w)
        assert stem + suffix == w and suffix in W.AFFIX_CLASSES


def test_composite_codes_share_factors():
    words = ["walk", "walked", "walking", "walks", "jump", "jumped", "jumping", "talk", "quickly", "the"]
    codes = W.composite_codes(words)
    sim = lambda u, v: float(S.gcd_similarity(codes[u], codes[v]))   # noqa: E731
    assert sim("walk", "walked") > 0.5                   # same stem
    assert sim("walked", "walking") > 0.5
    assert 0 < sim("walked", "jumped") < sim("walk", "walked")   # same affix class: weaker
    assert sim("walked", "jumping") == 0.0               # different stem and suffix
    assert sim("walking", "quickly") == 0.0
    assert len(set(codes.values())) == len(codes)         # unique per distinct word


def test_codebook_factorisation_and_frequency_rank():
    words = ["b", "cat", "cats", "dog", "dogs", "dogged", "dog"]
    book = W.build_codebook(words)
    assert max(book.affix_prime.values()) < min(book.stem_prime.values())
    assert book.stem_prime["dog"] < book.stem_prime["cat"]          # dog stem counted 4 times
    for w, c in book.codes.items():
        stem, suffix = book.factor(c)
        assert stem + suffix == w and book.word(c) == w
        assert W.split_code(c) == (book.stem_prime[stem], book.affix_prime[suffix])
    book2 = W.build_codebook(["cat", "dog"], counts={"cat": 10, "dog": 1})
    assert book2.stem_prime["cat"] < book2.stem_prime["dog"]
    assert W.composite_codes(["cat", "dog"], counts=[1, 10])["dog"] == 2 * book2.stem_prime["cat"]
    with pytest.raises(ValueError, match="^counts "):
        W.composite_codes(["a", "b"], counts=[1])
    with pytest.raises(ValueError, match="^words "):
        W.composite_codes(["a", 3])


def test_codes_unique_on_a_larger_vocabulary():
    stems = ["walk", "talk", "jump", "play", "work", "read", "help", "kind", "quick", "slow", "open", "turn"]
    words = [s + suf for s in stems for suf in W.AFFIX_CLASSES] + ["a", "an", "of", "is"]
    codes = W.composite_codes(words)
    assert len(codes) == len(words) and len(set(codes.values())) == len(words)
    arr = np.array([codes[w] for w in words])
    M = S.gcd_similarity_matrix(arr)
    same_stem = np.array([[W.split_word(u)[0] == W.split_word(v)[0] for v in words] for u in words])
    assert np.all(M[same_stem] > 0)
    assert np.count_nonzero(M) < M.size                  # informative: not all pairs are related
