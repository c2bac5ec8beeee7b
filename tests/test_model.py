"""The whole model: gradient checks, causality, initial loss, stability, determinism, validation,
and the activation store against its closed-form size."""
import math

import numpy as np
import pytest

import cllm
from cllm.activations import activation_bytes
from cllm.gradcheck import check_model
from cllm.model import param_shapes

from conftest import perturbed_model, tiny_config


def batch(cfg, rng, B=3):
    idx = rng.integers(0, cfg.vocab_size, (B, cfg.max_seq_len))
    return idx, rng.integers(0, cfg.vocab_size, (B, cfg.max_seq_len))


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("activation", ["gelu", "tanh"])
def test_whole_model_gradcheck(rng, tie, activation):
    """2 layers, 2 heads, d_model 16, seq 8, batch 3, float64, dropout 0.1 with a fixed mask."""
    cfg = tiny_config(tie_weights=tie, activation=activation, dropout=0.1)
    model = perturbed_model(cfg)
    idx, targets = batch(cfg, rng)
    report = check_model(model, idx, targets, dropout_seed=7, max_entries=60)
    assert set(report.errors()) == set(model.params)
    assert report.max_rel_error < 1e-6, str(report)


def test_whole_model_gradcheck_every_entry(rng):
    """No sampling: every entry of every tensor, for the default options (tied head, GELU)."""
    cfg = tiny_config()
    model = perturbed_model(cfg, seed=3)
    idx, targets = batch(cfg, rng)
    report = check_model(model, idx, targets)
    assert sum(r.checked for r in report.rows) == model.num_params()
    assert report.max_rel_error < 1e-6, str(report)


def test_dropout_mask_is_used_and_saved(rng):
    cfg = tiny_config(dropout=0.1)
    model = cllm.Model(cfg, seed=0)
    idx, targets = batch(cfg, rng)
    _, l_train, acts = model.forward(idx, targets, train=True, rng=np.random.default_rng(1))
    _, l_eval, acts_eval = model.forward(idx, targets, train=False)
    assert "emb.drop" in acts and "h.0.attn.drop" in acts and "h.1.mlp.resid_drop" in acts
    assert "emb.drop" not in acts_eval
    assert l_train != l_eval
    assert model.forward(idx, targets, train=True, rng=np.random.default_rng(1))[1] == l_train


@pytest.mark.parametrize("init", ["gpt2", "xavier", "he"])
def test_inits_differ_and_gradients_are_right(rng, init):
    cfg = tiny_config(init=init)
    model = cllm.Model(cfg, seed=0)
    w = model.params["h.0.mlp.c_fc.weight"]
    expected = {"gpt2": 0.02, "xavier": math.sqrt(2 / (16 + 32)), "he": math.sqrt(2 / 16)}[init]
    assert abs(w.std() - expected) < 0.2 * expected
    idx, targets = batch(cfg, rng)
    assert check_model(model, idx, targets, max_entries=20).max_rel_error < 1e-6


def test_gpt2_init_details():
    cfg = cllm.ModelConfig(vocab_size=50, d_model=64, n_layers=8, n_heads=4, d_ff=256, max_seq_len=32)
    p = cllm.Model(cfg, seed=0).params
    assert np.all(p["h.3.ln_1.weight"] == 1) and np.all(p["h.3.ln_2.bias"] == 0)
    assert np.all(p["h.0.attn.c_attn.bias"] == 0)
    assert abs(p["wte"].std() - 0.02) < 0.002
    assert abs(p["h.0.mlp.c_fc.weight"].std() - 0.02) < 0.002
    resid = 0.02 / math.sqrt(2 * 8)
    assert abs(p["h.2.mlp.c_proj.weight"].std() - resid) < 0.1 * resid
    assert abs(p["h.2.attn.c_proj.weight"].std() - resid) < 0.1 * resid


@pytest.mark.parametrize("V", [65, 611, 2000])
def test_initial_loss_is_ln_vocab(rng, V):
    cfg = cllm.ModelConfig(vocab_size=V, d_model=128, n_layers=4, n_heads=4, d_ff=512, max_seq_len=64)
    model = cllm.Model(cfg, seed=0)
    idx = rng.integers(0, V, (4, 64))
    loss = model.loss(idx, rng.integers(0, V, (4, 64)))
    assert abs(loss - math.log(V)) < 0.1


def test_causality(rng):
    cfg = tiny_config(n_layers=3)
    model = perturbed_model(cfg, scale=0.3)
    idx = rng.integers(0, cfg.vocab_size, (2, 8))
    base = model.forward(idx, train=False)[0]
    for t in range(7):
        changed = idx.copy()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % cfg.vocab_size
        logits = model.forward(changed, train=False)[0]
        assert np.max(np.abs(logits[:, :t + 1] - base[:, :t + 1])) <= 1e-12
        assert np.max(np.abs(logits[:, t + 1] - base[:, t + 1])) > 1e-6  # and the future does move


def test_attention_rows_sum_to_one(rng):
    cfg = tiny_config()
    model = perturbed_model(cfg, scale=0.5)
    _, _, acts = model.forward(*batch(cfg, rng))
    for l in range(cfg.n_layers):
        probs = acts[f"h.{l}.attn.probs"]
        assert probs.shape == (3, cfg.n_heads, 8, 8)
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)
        assert np.all(np.triu(probs[0, 0], 1) == 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_logits_finite(rng, dtype):
    """Scale the head so that logits reach +-1e4: the loss and every gradient stay finite."""
    cfg = tiny_config(dtype=dtype, tie_weights=False)
    model = cllm.Model(cfg, seed=0)
    idx, targets = batch(cfg, rng)
    h = model.forward(idx, targets)[2]["ln_f.out"]
    model.params["lm_head.weight"][...] = rng.choice([-1.0, 1.0], (cfg.vocab_size, cfg.d_model)) * 1e4 / cfg.d_model
    logits, loss, acts = model.forward(idx, targets)
    assert np.abs(logits).max() > 1e3
    grads = model.backward(acts)
    assert np.isfinite(loss) and loss > 100
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_fixed_seed_is_bit_identical(rng):
    cfg = tiny_config(dtype="float32", dropout=0.1)
    idx, targets = batch(cfg, rng)
    runs = []
    for _ in range(2):
        model = cllm.Model(cfg, seed=42)
        losses = []
        for _ in range(3):
            _, loss, acts = model.forward(idx, targets, train=True)
            for k, g in model.backward(acts).items():
                model.params[k] -= 0.1 * g
            losses.append(loss)
        runs.append((losses, {k: v.copy() for k, v in model.params.items()}))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    other = cllm.Model(cfg, seed=43)
    assert not np.array_equal(other.params["wte"], cllm.Model(cfg, seed=42).params["wte"])


def test_float32_and_float64_agree(rng):
    c64 = tiny_config()
    m64, m32 = cllm.Model(c64, 0), cllm.Model(tiny_config(dtype="float32"), 0)
    idx, targets = batch(c64, rng)
    _, l64, a64 = m64.forward(idx, targets)
    _, l32, a32 = m32.forward(idx, targets)
    assert abs(l64 - l32) < 1e-5
    g64, g32 = m64.backward(a64), m32.backward(a32)
    for k in g64:
        assert g32[k].dtype == np.float32 and m32.params[k].dtype == np.float32
        assert np.linalg.norm(g64[k] - g32[k]) <= 1e-4 * np.linalg.norm(g64[k]) + 1e-9, k


def test_grads_match_params_layout(rng):
    for tie in (True, False):
        cfg = tiny_config(tie_weights=tie)
        model = cllm.Model(cfg, 0)
        grads = model.backward(model.forward(*batch(cfg, rng))[2])
        assert list(grads) == list(model.params)
        assert all(grads[k].shape == model.params[k].shape for k in grads)
        assert ("lm_head.weight" in model.params) == (not tie)


def test_num_params_seed_configuration():
    cfg = cllm.ModelConfig(vocab_size=611, d_model=512, n_layers=6, n_heads=8, d_ff=2048, max_seq_len=32)
    C, F, L, V, T = 512, 2048, 6, 611, 32
    per_block = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * F + F) + (F * C + C)
    assert cllm.Model(cfg, 0).num_params() == V * C + T * C + L * per_block + 2 * C


@pytest.mark.parametrize("dropout,dtype", [(0.0, "float32"), (0.1, "float64")])
def test_activation_store_matches_formula(rng, dropout, dtype):
    cfg = cllm.ModelConfig(vocab_size=37, d_model=24, n_layers=3, n_heads=4, d_ff=40, max_seq_len=10,
                           dropout=dropout, dtype=dtype)
    model = cllm.Model(cfg, 0)
    B, T = 5, 7
    idx = rng.integers(0, 37, (B, T))
    acts = model.forward(idx, rng.integers(0, 37, (B, T)), train=True)[2]
    expected = activation_bytes(B, T, 24, 4, 3, 37, 40, itemsize=np.dtype(dtype).itemsize, dropout=dropout > 0)
    assert acts.nbytes() == expected
    assert sum(r[3] for r in acts.rows()) == expected
    assert "total" in acts.table() and "h.*.attn.probs" in acts.table(group_layers=True)


def test_seed_configuration_store_size():
    """The earlier estimate was ~8.4 MB: it left out the attention probabilities, the qkv, the
    LayerNorm buffers and the probabilities of the output softmax."""
    size = activation_bytes(B=4, T=32, C=512, H=8, L=6, V=611, d_ff=2048, itemsize=4)
    assert size == 27_115_520
    assert size > 3 * 8.4e6


@pytest.mark.parametrize("kwargs,field", [
    (dict(d_model=10, n_heads=3), "d_model"),
    (dict(n_layers=0), "n_layers"),
    (dict(vocab_size=-1), "vocab_size"),
    (dict(d_ff=2.5), "d_ff"),
    (dict(dtype="float16"), "dtype"),
    (dict(activation="softplus"), "activation"),  # relu is a valid activation now
    (dict(init="zeros"), "init"),
    (dict(dropout=1.0), "dropout"),
    (dict(embedding="prime"), "embedding"),
    (dict(attention_bias="yes"), "attention_bias"),
])
def test_invalid_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**kwargs)


def test_invalid_inputs(rng):
    model = cllm.Model(tiny_config(), 0)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.forward(rng.integers(0, 11, (2, 9)))
    with pytest.raises(ValueError, match="vocab_size"):
        model.forward(np.array([[0, 11]]))
    with pytest.raises(ValueError, match="vocab_size"):
        model.forward(np.array([[0, -1]]))
    with pytest.raises(ValueError, match="integer"):
        model.forward(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="targets"):
        model.forward(np.array([[0, 1]]), np.array([[0, 1, 2]]))


def test_load_params_validates(rng):
    model = cllm.Model(tiny_config(), 0)
    other = cllm.Model(tiny_config(), 1)
    model.load_params(other.params)
    assert np.array_equal(model.params["wte"], other.params["wte"])
    bad = dict(other.params)
    bad["wte"] = bad["wte"][:, :3]
    with pytest.raises(ValueError, match="wte"):
        model.load_params(bad)
    assert list(param_shapes(tiny_config())) == list(model.params)


def test_backward_trace_follows_the_store(rng):
    """The traced gradients are the gradients of the stored activations: same names, same shapes."""
    cfg = tiny_config()
    model = perturbed_model(cfg)
    idx, targets = batch(cfg, rng)
    _, _, acts = model.forward(idx, targets)
    trace = []
    grads = model.backward(acts, trace=trace)
    names = [n for n, _ in trace]
    assert names[0] == "logits" and names[-1] == "h.0.ln_1.in"
    assert all(acts[n].shape == g.shape for n, g in trace)
    # the trace's gradient of the last LayerNorm input is what the block below receives
    assert names.index("h.1.ln_1.in") < names.index("h.0.mlp.act")
    assert list(grads) == list(model.params)


def test_backward_into_preallocated_buffers(rng):
    for cfg in (tiny_config(), tiny_config(tie_weights=False, embedding="lattice", attention_bias="lattice",
                                           lattice_features=6)):
        model = perturbed_model(cfg)
        idx, targets = batch(cfg, rng)
        fresh = model.backward(model.forward(idx, targets)[2])
        out = model.zeros_like_params()
        ids = {k: id(v) for k, v in out.items()}
        got = model.backward(model.forward(idx, targets)[2], out=out)
        assert got is out and all(id(v) == ids[k] for k, v in out.items())
        for k in fresh:
            np.testing.assert_array_equal(out[k], fresh[k], err_msg=k)
