"""Prime embeddings, lattice-biased attention and the GCD regulariser inside the model."""
import numpy as np
import pytest

import cllm
from cllm import ops
from cllm.gradcheck import check_model, check_op
from cllm.generate import KVCache, forward_cached
from cllm.lattice.model import (frequency_rank_codes, gcd_regulariser, lattice_attention_basis,
                                lattice_embedding_backward, lattice_embedding_forward)

from conftest import perturbed_model, tiny_config

# composite codes root prime x affix prime: tokens 0-3 share the root 7, tokens 0, 4, 8 share the affix 2
COMPOSITE = (14, 21, 35, 77, 22, 33, 55, 26, 34, 39, 57)


def test_lattice_embedding_op_gradcheck(rng):
    inputs = dict(F=rng.standard_normal((9, 5)), W=rng.standard_normal((5, 4)), R=rng.standard_normal((9, 4)))

    def bwd(dE):
        dW, dR = lattice_embedding_backward(dE, inputs["F"])
        return dict(W=dW, R=dR)

    report = check_op(lattice_embedding_forward, bwd, inputs)
    assert set(report.errors()) == {"W", "R"} and report.max_rel_error < 1e-7


def test_lattice_bias_op_gradcheck_including_beta(rng):
    B, T, H, hd = 2, 6, 3, 4
    angles = rng.uniform(0, 2 * np.pi, 10)
    idx = rng.integers(0, 10, (B, T))
    basis = lattice_attention_basis(angles, np.arange(1.0, H + 1), idx)  # (B, H, T, T)
    inputs = dict(qkv=rng.standard_normal((B, T, 3 * H * hd)), beta=rng.standard_normal(H))

    def fwd(qkv, beta):
        return ops.attention_forward(qkv, H, beta[None, :, None, None] * basis)[0]

    def bwd(dy):
        _, probs, _ = ops.attention_forward(inputs["qkv"], H, inputs["beta"][None, :, None, None] * basis)
        dqkv, dscores = ops.attention_backward(dy, inputs["qkv"], probs, H, return_dscores=True)
        return dict(qkv=dqkv, beta=np.einsum("bhij,bhij->h", dscores, basis))

    assert check_op(fwd, bwd, inputs).max_rel_error < 1e-7


def test_basis_is_the_cosine_of_angle_differences(rng):
    angles = rng.uniform(0, 2 * np.pi, 7)
    idx = rng.integers(0, 7, (2, 5))
    basis = lattice_attention_basis(angles, np.array([1.0, 3.0]), idx)
    th = angles[idx]  # (B, T)
    expected = np.cos(np.array([1.0, 3.0])[None, :, None, None] * (th[:, None, :, None] - th[:, None, None, :]))
    np.testing.assert_allclose(basis, expected, atol=1e-14)


def test_regulariser_gradcheck_and_value(rng):
    from cllm.lattice import gcd_similarity_matrix
    S = gcd_similarity_matrix(np.array(COMPOSITE))
    L = np.diag(S.sum(1)) - S
    E = rng.standard_normal((11, 3))
    value, dE = gcd_regulariser(E, L, 0.3)
    direct = 0.3 * sum(S[a, b] * np.sum((E[a] - E[b]) ** 2) for a in range(11) for b in range(11))
    assert abs(value - direct) < 1e-10 * direct
    report = check_op(lambda E: np.array(gcd_regulariser(E, L, 0.3)[0]), lambda d: dict(E=d * dE), dict(E=E))
    assert report.max_rel_error < 1e-7


@pytest.mark.parametrize("embedding,bias,reg,tie", [
    ("lattice", "none", 0.0, True), ("learned", "lattice", 0.0, True), ("lattice", "lattice", 0.0, False),
    ("lattice", "lattice", 0.05, True), ("learned", "none", 0.05, False)])
def test_model_gradcheck_with_lattice(rng, embedding, bias, reg, tie):
    cfg = tiny_config(embedding=embedding, attention_bias=bias, lattice_reg=reg, tie_weights=tie,
                      lattice_features=6, lattice_codes=COMPOSITE if reg else None, dropout=0.1)
    model = perturbed_model(cfg, seed=4)
    idx = rng.integers(0, 11, (3, 8))
    report = check_model(model, idx, rng.integers(0, 11, (3, 8)), dropout_seed=3, max_entries=40)
    assert report.max_rel_error < 1e-6, str(report)
    if embedding == "lattice":
        assert "lattice.proj" in report.errors()
    if bias == "lattice":
        assert "h.1.attn.lattice_beta" in report.errors()


def test_beta_zero_is_plain_attention_exactly(rng):
    plain = cllm.Model(tiny_config(), seed=0)
    biased = cllm.Model(tiny_config(attention_bias="lattice"), seed=0)
    assert all(np.all(biased.params[f"h.{l}.attn.lattice_beta"] == 0) for l in range(2))
    idx = rng.integers(0, 11, (3, 8))
    a, b = plain.forward(idx, train=False), biased.forward(idx, train=False)
    assert np.array_equal(a[0], b[0])
    for l in range(2):
        assert np.array_equal(a[2][f"h.{l}.attn.probs"], b[2][f"h.{l}.attn.probs"])


def test_lattice_attention_rows_causal_and_cached(rng):
    cfg = tiny_config(attention_bias="lattice", embedding="lattice", lattice_features=8)
    model = perturbed_model(cfg, seed=1, scale=0.5)
    idx = rng.integers(0, 11, (2, 8))
    logits, _, acts = model.forward(idx, train=False)
    probs = acts["h.0.attn.probs"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)
    assert np.all(probs[..., np.triu_indices(8, 1)[0], np.triu_indices(8, 1)[1]] == 0)
    changed = idx.copy()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    assert np.max(np.abs(model.forward(changed, train=False)[0][:, :5] - logits[:, :5])) <= 1e-12
    cache = KVCache(model, 2)
    cached = np.concatenate([forward_cached(model, idx[:, :3], cache)] +
                            [forward_cached(model, idx[:, t:t + 1], cache) for t in range(3, 8)], axis=1)
    assert np.max(np.abs(cached - logits)) < 1e-10


def test_lattice_embedding_init_and_features():
    cfg = cllm.ModelConfig(vocab_size=65, embedding="lattice")
    model = cllm.Model(cfg, seed=0)
    F = model.buffers["lattice.features"]
    assert F.shape == (65, 32) and np.linalg.matrix_rank(F) == 32
    assert np.all(np.abs(F).sum(1) > 0) and len(np.unique(F, axis=0)) == 65
    assert np.all(model.params["wte"] == 0)  # R starts at 0: E = F W at init
    E = model.embedding_matrix()
    assert 0.01 < E.std() < 0.04
    assert np.linalg.matrix_rank(E) == 32


def test_frequency_rank_codes():
    ids = np.array([3, 3, 3, 1, 1, 0, 2, 2, 2, 2])
    assert frequency_rank_codes(ids, 5) == (7, 5, 2, 3, 11)  # 2 most frequent, then 3, 1, 0, 4


@pytest.mark.parametrize("codes,match", [((2, 3), "lattice_codes"), (tuple([4] * 11), "distinct"),
                                         (tuple(range(1, 12)), "lattice_codes")])
def test_bad_codes(codes, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(lattice_codes=codes)


def test_config_roundtrip_with_codes():
    cfg = tiny_config(lattice_codes=COMPOSITE, embedding="lattice")
    again = cllm.ModelConfig.from_dict(__import__("json").loads(__import__("json").dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.lattice_codes, tuple)
