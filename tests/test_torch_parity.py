"""cllm's hand-written forward and backward passes and its AdamW against an independent PyTorch
implementation of the same model (cllm/lab/torch_reference.py), on the same weights and batch.

float64: the loss to 1e-12, every gradient tensor and the parameters after three AdamW steps to 1e-10
(relative, ||a - b|| / ||b||). float32: every gradient to 1e-4. Over tied and untied heads and both
MLP activations. Skipped when torch (an optional extra) is not installed.
"""
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is optional: pip install torch==2.13.0 to run the parity tests")

import cllm  # noqa: E402
from cllm.gradcheck import perturb  # noqa: E402
from cllm.lab.torch_reference import TorchGPT, decay_groups, make_torch_adamw  # noqa: E402
from cllm.model import param_shapes  # noqa: E402
from cllm.optim import AdamW, default_decay  # noqa: E402

V, C, L, H, D_FF, T, B = 37, 32, 2, 4, 64, 16, 3
# lr 3e-3: three steps move every tensor by percents. The key part of c_attn.bias has a gradient that is
# exactly zero in exact arithmetic (a constant added to every score of a row leaves the softmax alone),
# so both sides see rounding noise (~1e-19) there, which Adam turns into updates of ~lr * noise / eps;
# at lr 3e-2 that alone reaches 7e-11 of the tensor's norm, at 3e-3 about 7e-12.
HYPER = dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)

CASES = [(tie, act) for tie in (True, False) for act in ("gelu", "tanh")]
IDS = [f"{'tied' if tie else 'untied'}-{act}" for tie, act in CASES]


@pytest.fixture(autouse=True)
def _deterministic_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: reductions in a fixed order, run to run
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def make_model(tie, act, dtype, seed=0):
    """A small model with every parameter moved off its init (no zero biases, no unit gains), so no
    gradient can hide behind a trivial value."""
    cfg = cllm.ModelConfig(vocab_size=V, d_model=C, n_layers=L, n_heads=H, d_ff=D_FF, max_seq_len=T,
                           dtype=dtype, activation=act, tie_weights=tie)
    model = cllm.Model(cfg, seed=seed)
    perturb(model.params, 0.1, seed + 100)
    return model


def batch(seed=7):
    r = np.random.default_rng(seed)
    return r.integers(0, V, (B, T)), r.integers(0, V, (B, T))


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def torch_loss_and_grads(tmodel, idx, tgt):
    tmodel.zero_grad(set_to_none=True)
    _, loss = tmodel(torch.from_numpy(idx), torch.from_numpy(tgt))
    loss.backward()
    return loss.item(), tmodel.grads()


# ------------------------------------------------------------------------------------ the reference
def test_reference_layout_matches_cllm():
    for tie in (True, False):
        model = make_model(tie, "gelu", "float64")
        tm = TorchGPT.from_cllm(model, dtype=torch.float64)
        shapes = param_shapes(model.cfg)
        assert list(tm.params) == list(shapes)  # same names, same order
        assert {k: tuple(p.shape) for k, p in tm.params.items()} == shapes
        assert ("lm_head.weight" in tm.params) == (not tie)
        for k, p in tm.numpy_params().items():
            np.testing.assert_array_equal(p, model.params[k])  # an exact copy
        # registered on the module, so torch's own machinery (optimizers, state_dict) sees them all
        assert sum(p.numel() for p in tm.parameters()) == model.num_params()


def test_reference_rejects_unsupported_configs():
    base = dict(vocab_size=V, d_model=C, n_layers=1, n_heads=H, d_ff=D_FF, max_seq_len=T)
    with pytest.raises(ValueError, match="dropout"):
        TorchGPT(cllm.ModelConfig(dropout=0.1, **base))
    with pytest.raises(ValueError, match="learned"):
        TorchGPT(cllm.ModelConfig(attention_bias="lattice", **base))


def test_decay_groups_follow_cllm_default_decay():
    model = make_model(False, "gelu", "float64")
    tm = TorchGPT.from_cllm(model, dtype=torch.float64)
    decayed, plain = decay_groups(tm, 0.1)
    name_of = {id(p): k for k, p in tm.params.items()}
    got = {name_of[id(p)] for p in decayed["params"]}
    want = {k for k, p in model.params.items() if default_decay(k, p)}
    assert got == want
    assert "wte" not in got and "wpe" not in got and "lm_head.weight" in got and "h.0.mlp.c_fc.weight" in got
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(plain["params"]) == len(tm.params)


def test_fused_adamw_is_available_on_cpu():
    model = make_model(True, "gelu", "float32")
    tm = TorchGPT.from_cllm(model, dtype=torch.float32)
    opt = make_torch_adamw(tm, fused=True, **HYPER)
    assert opt.cllm_impl == "fused"
    idx, tgt = batch()
    torch_loss_and_grads(tm, idx, tgt)
    before = tm.numpy_params()
    opt.step()
    after = tm.numpy_params()
    assert all(np.isfinite(a).all() for a in after.values())
    assert rel(after["h.0.mlp.c_fc.weight"], before["h.0.mlp.c_fc.weight"]) > 1e-3  # it moved


# ------------------------------------------------------------------------------------ float64 parity
@pytest.mark.parametrize("tie,act", CASES, ids=IDS)
@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_float64_loss_and_gradients_match(tie, act, attention):
    model = make_model(tie, act, "float64")
    tm = TorchGPT.from_cllm(model, dtype=torch.float64, attention=attention)
    idx, tgt = batch()
    _, loss, acts = model.forward(idx, tgt)
    grads = model.backward(acts)
    tloss, tgrads = torch_loss_and_grads(tm, idx, tgt)
    assert loss > 1.0  # a real cross-entropy over 37 classes, not a degenerate value
    assert abs(loss - tloss) <= 1e-12
    assert list(grads) == list(tgrads)
    for name in grads:
        assert np.linalg.norm(tgrads[name]) > 0, name  # every parameter receives a gradient
        assert rel(grads[name], tgrads[name]) <= 1e-10, name


@pytest.mark.parametrize("tie,act", CASES, ids=IDS)
def test_float64_three_adamw_steps_match(tie, act):
    model = make_model(tie, act, "float64")
    tm = TorchGPT.from_cllm(model, dtype=torch.float64)
    start = {k: v.copy() for k, v in model.params.items()}
    opt = AdamW(model.params, **HYPER)  # cllm: no clipping inside step
    topt = make_torch_adamw(tm, fused=False, **HYPER)
    assert topt.cllm_impl == "for-loop"
    for step in range(3):
        idx, tgt = batch(seed=step)  # a new batch each step
        _, loss, acts = model.forward(idx, tgt)
        opt.step(model.backward(acts))
        tloss, _ = torch_loss_and_grads(tm, idx, tgt)
        topt.step()
        assert abs(loss - tloss) <= 1e-12, step
    tparams = tm.numpy_params()
    for name, p in model.params.items():
        assert rel(p, tparams[name]) <= 1e-10, name
        # the steps did something: every tensor moved by far more than the tolerance
        assert rel(p, start[name]) > 1e-4, name


# ------------------------------------------------------------------------------------ float32 parity
@pytest.mark.parametrize("tie,act", CASES, ids=IDS)
def test_float32_gradients_match(tie, act):
    model = make_model(tie, act, "float32")
    tm = TorchGPT.from_cllm(model, dtype=torch.float32)
    idx, tgt = batch()
    _, loss, acts = model.forward(idx, tgt)
    grads = model.backward(acts)
    tloss, tgrads = torch_loss_and_grads(tm, idx, tgt)
    assert abs(loss - tloss) <= 1e-5 * abs(tloss)
    for name in grads:
        assert grads[name].dtype == np.float32 and tgrads[name].dtype == np.float32
        assert rel(grads[name], tgrads[name]) <= 1e-4, name


def test_parity_is_not_vacuous():
    """The tolerances above separate right from wrong: a small change of one weight is detected."""
    model = make_model(True, "gelu", "float64")
    tm = TorchGPT.from_cllm(model, dtype=torch.float64)
    model.params["h.1.mlp.c_fc.weight"][3, 5] += 1e-6
    idx, tgt = batch()
    _, loss, acts = model.forward(idx, tgt)
    grads = model.backward(acts)
    tloss, tgrads = torch_loss_and_grads(tm, idx, tgt)
    assert abs(loss - tloss) > 1e-12 or rel(grads["h.1.mlp.c_fc.weight"], tgrads["h.1.mlp.c_fc.weight"]) > 1e-10
    assert max(rel(grads[k], tgrads[k]) for k in grads) > 1e-10


# ------------------------------------------------------------------------------------ the bench's switch
def test_compare_torch_without_torch_says_how_to_enable(monkeypatch, capsys):
    from cllm.lab import compare_torch as bench_torch

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail, as when it is absent
    assert bench_torch.compare_torch(repeats=1, configs=("small",), peak=1.0) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "pip install torch==2.13.0" in out[0]


def test_interleaved_timing_runs_both_on_the_same_model():
    from cllm.lab import compare_torch as bench_torch

    cfg = cllm.ModelConfig(vocab_size=V, d_model=C, n_layers=1, n_heads=H, d_ff=D_FF, max_seq_len=T)
    r = bench_torch._interleaved(cfg, 2, 2, torch, TorchGPT, make_torch_adamw, warmup=1)
    assert abs(r["first_loss"]["cllm"] - r["first_loss"]["torch"]) < 1e-5  # same weights, same batch
    for impl in ("cllm", "torch"):
        t = r[impl]
        assert all(t[k] > 0 for k in ("forward", "backward", "optimizer"))
        assert t["step"] >= max(t["forward"], t["backward"], t["optimizer"])
    assert r["impl"] == "fused"
