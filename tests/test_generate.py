"""Sampling rules and the KV cache."""
import numpy as np
import pytest

import cllm
from cllm.generate import KVCache, forward_cached, generate, sample_next

from conftest import perturbed_model


@pytest.fixture
def model():
    cfg = cllm.ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=24, dtype="float64")
    return perturbed_model(cfg, seed=2, scale=0.2)


@pytest.mark.parametrize("tie", [True, False])
def test_cached_logits_equal_full_recompute(rng, tie):
    cfg = cllm.ModelConfig(vocab_size=40, d_model=32, n_layers=3, n_heads=4, d_ff=64, max_seq_len=24,
                           dtype="float64", tie_weights=tie, activation="tanh" if tie else "gelu")
    model = perturbed_model(cfg, seed=5, scale=0.2)
    ids = rng.integers(0, 40, (3, 24))
    full = model.forward(ids, train=False)[0]  # (B, T, V)
    cache = KVCache(model, 3)
    pieces = [forward_cached(model, ids[:, :7], cache)]  # a prompt of 7, then one token at a time
    for t in range(7, 24):
        pieces.append(forward_cached(model, ids[:, t:t + 1], cache))
    cached = np.concatenate(pieces, axis=1)
    assert np.max(np.abs(cached - full)) < 1e-10
    assert cache.length == 24
    with pytest.raises(ValueError, match="max_seq_len"):
        forward_cached(model, ids[:, :1], cache)


def test_generate_same_tokens_with_and_without_cache(model):
    prompt = np.array([3, 1, 4, 1, 5])
    for kw in (dict(temperature=0.0), dict(temperature=0.9, top_k=7, seed=11), dict(temperature=1.2, top_p=0.8, seed=4)):
        a = generate(model, prompt, 19, use_cache=True, **kw)  # stays within max_seq_len = 24
        b = generate(model, prompt, 19, use_cache=False, **kw)
        assert a.shape == (1, 24) and np.array_equal(a, b), kw
        assert np.array_equal(a[0, :5], prompt)


def test_generate_past_the_context(model):
    out = generate(model, [1, 2, 3], 60, temperature=1.0, seed=0)
    assert out.shape == (1, 63) and out.min() >= 0 and out.max() < 40
    assert np.array_equal(out, generate(model, [1, 2, 3], 60, temperature=1.0, seed=0))  # seeded


def test_greedy_is_argmax(model):
    logits = model.forward(np.array([[7, 8, 9]]), train=False)[0][:, -1]
    nxt = generate(model, [7, 8, 9], 1, temperature=0.0)[0, -1]
    assert nxt == np.argmax(logits)


def test_top_k_and_top_p_restrict_the_support():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    draws = np.array([sample_next(logits, 1.0, top_k=2, rng=rng)[0] for _ in range(400)])
    assert set(draws) == {0, 1}
    draws = np.array([sample_next(logits, 1.0, top_p=0.7, rng=rng)[0] for _ in range(400)])
    assert set(draws) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: the nucleus is {0, 1}
    draws = np.array([sample_next(logits, 1.0, rng=rng)[0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    cold = np.array([sample_next(logits, 0.05, rng=rng)[0] for _ in range(100)])
    assert np.all(cold == 0)  # low temperature concentrates on the argmax


@pytest.mark.parametrize("kw,match", [(dict(temperature=-1), "temperature"), (dict(top_k=0), "top_k"),
                                      (dict(top_p=1.5), "top_p")])
def test_sampling_arguments_are_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        sample_next(np.zeros((1, 3)), **{"temperature": 1.0, **kw})
