"""Optimizers, clipping, schedule and accumulation, checked against hand computations."""
import io
import math

import numpy as np
import pytest

from cllm.config import TrainConfig
from cllm.optim import (SGD, AdamW, accumulate, adamw_reference, clip_grad_norm, default_decay, lr_at, make_optimizer,
                        zeros_like_grads)

P0 = [1.0, -2.0]
G1 = [0.5, 0.25]
G2 = [-1.0, 2.0]


def _vec(values):
    return np.array(values, dtype=np.float64)


# -- SGD -------------------------------------------------------------------------------------------

def test_sgd_two_steps_by_hand():
    params = {"b": _vec(P0)}
    arr = params["b"]
    opt = SGD(params, lr=0.1)
    opt.step({"b": _vec(G1)})
    opt.step({"b": _vec(G2)})
    expected = [P0[i] - 0.1 * G1[i] - 0.1 * G2[i] for i in range(2)]  # [1.05, -2.225]
    np.testing.assert_allclose(params["b"], expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(params["b"], [1.05, -2.225], rtol=0, atol=1e-15)
    assert params["b"] is arr  # updated in place


def test_sgd_momentum_two_steps_by_hand():
    params = {"b": _vec(P0)}
    opt = SGD(params, lr=0.1, momentum=0.9)
    opt.step({"b": _vec(G1)})
    opt.step({"b": _vec(G2)})
    expected = []
    for i in range(2):
        buf = G1[i]                  # first step: buf = g
        p = P0[i] - 0.1 * buf
        buf = 0.9 * buf + G2[i]
        expected.append(p - 0.1 * buf)
    np.testing.assert_allclose(params["b"], expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(params["b"], [1.005, -2.2475], rtol=0, atol=1e-15)
    np.testing.assert_allclose(opt.state_dict()["momentum/b"], [0.9 * 0.5 - 1.0, 0.9 * 0.25 + 2.0])


def test_sgd_weight_decay_is_coupled_and_matrices_only():
    params = {"w": np.full((1, 2), 2.0), "b": np.full(2, 2.0)}
    opt = SGD(params, lr=0.5, weight_decay=0.1)
    opt.step({"w": np.ones((1, 2)), "b": np.ones(2)})
    np.testing.assert_allclose(params["w"], 2.0 - 0.5 * (1.0 + 0.1 * 2.0))  # g + wd * p
    np.testing.assert_allclose(params["b"], 2.0 - 0.5 * 1.0)


# -- AdamW -----------------------------------------------------------------------------------------

def _adamw_by_hand(p, grads, decayed, lr, b1, b2, eps, wd):
    """Plain Python floats, one coordinate, following torch.optim.AdamW's documented algorithm."""
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        if decayed:
            p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * m_hat / (math.sqrt(v_hat) + eps)
    return p


def test_adamw_two_steps_by_hand():
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.99, 1e-8, 0.1
    params = {"h.0.mlp.c_fc.weight": np.array([[1.0, -2.0]]), "h.0.mlp.c_fc.bias": _vec(P0)}
    opt = AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    opt.step({k: np.array([G1]).reshape(p.shape) for k, p in params.items()})
    # after one step each coordinate moved by lr against the sign of its gradient (m_hat/sqrt(v_hat) = sign g)
    np.testing.assert_allclose(params["h.0.mlp.c_fc.bias"], [1.0 - lr, -2.0 - lr], rtol=1e-9)
    np.testing.assert_allclose(params["h.0.mlp.c_fc.weight"], [[1.0 * (1 - lr * wd) - lr, -2.0 * (1 - lr * wd) - lr]],
                               rtol=1e-9)
    opt.step({k: np.array([G2]).reshape(p.shape) for k, p in params.items()})
    for name, decayed in (("h.0.mlp.c_fc.weight", True), ("h.0.mlp.c_fc.bias", False)):
        expected = [_adamw_by_hand(P0[i], [G1[i], G2[i]], decayed, lr, b1, b2, eps, wd) for i in range(2)]
        np.testing.assert_allclose(params[name].ravel(), expected, rtol=1e-13, atol=0)
    assert int(opt.state_dict()["step"]) == 2


def test_weight_decay_applies_to_matrices_only():
    shapes = {"wte": (5, 4), "wpe": (3, 4), "h.0.ln_1.weight": (4,), "h.0.ln_1.bias": (4,),
              "h.0.attn.c_attn.weight": (4, 12), "h.0.attn.c_attn.bias": (12,), "h.0.attn.lattice_beta": (2,),
              "lattice.proj": (6, 4), "lm_head.weight": (5, 4)}
    params = {k: np.full(s, 3.0) for k, s in shapes.items()}
    decayed = {k for k, p in params.items() if default_decay(k, p)}
    assert decayed == {"h.0.attn.c_attn.weight", "lattice.proj", "lm_head.weight"}
    opt = AdamW(params, lr=0.1, weight_decay=0.5)
    opt.step(zeros_like_grads(params))  # zero gradients: only the decay moves anything
    for k, p in params.items():
        np.testing.assert_array_equal(p, 3.0 * (1 - 0.1 * 0.5) if k in decayed else 3.0)
    # a custom rule replaces the default
    params = {k: np.full(s, 3.0) for k, s in shapes.items()}
    AdamW(params, lr=0.1, weight_decay=0.5, decay=lambda name, a: name == "wte").step(zeros_like_grads(params))
    assert {k for k, p in params.items() if (p != 3.0).any()} == {"wte"}


def _adamw_run(dtype, chunk, threads, steps=4):
    """Parameters after ``steps`` AdamW steps (chunked, threaded) and after the textbook reference."""
    rng = np.random.default_rng(0)
    shapes = {"wte": (11, 8), "h.0.attn.c_attn.weight": (8, 24), "h.0.attn.c_attn.bias": (24,), "ln_f.weight": (8,)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    ref = {k: p.copy() for k, p in params.items()}
    m = {k: np.zeros_like(p) for k, p in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    opt = AdamW(params, lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.2, chunk_size=chunk, threads=threads)
    for t in range(1, steps + 1):
        grads = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
        lr = 3e-3 * t / 4
        opt.step(grads, lr=lr)
        for k in ref:
            adamw_reference(ref[k], grads[k], m[k], v[k], t, lr, 0.8, 0.95, 1e-6, 0.2 if default_decay(k, ref[k]) else 0.0)
    return opt, params, ref, m, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunk,threads", [(7, 1), (64, 3), (1 << 16, 1), (5, 4)])
def test_chunked_matches_textbook_reference(dtype, chunk, threads):
    opt, params, ref, m, v = _adamw_run(dtype, chunk, threads)
    _, baseline, _, _, _ = _adamw_run(dtype, 1 << 16, 1)
    tol = 1e-5 if dtype == np.float32 else 1e-13  # the sums form rounds differently from the textbook form
    for k in params:
        assert params[k].dtype == dtype
        np.testing.assert_allclose(params[k], ref[k], rtol=tol, atol=tol)
        mk, vk = opt.moments(k)
        np.testing.assert_allclose(mk, m[k], rtol=tol * 10, atol=1e-12)
        np.testing.assert_allclose(vk, v[k], rtol=tol * 10, atol=1e-12)
        # every chunk size and thread count computes each element by the same operations: same bits
        np.testing.assert_array_equal(params[k], baseline[k])


def test_textbook_moments_load_as_sums():
    """A state with textbook moments (checkpoints from before the sums were kept) continues the run."""
    rng = np.random.default_rng(3)
    shapes = {"w": (4, 3), "b": (3,)}
    grads = [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(4)]
    params_a = {k: rng.standard_normal(s) for k, s in shapes.items()}
    opt_a = AdamW(params_a, lr=1e-2)
    for g in grads[:2]:
        opt_a.step(g)
    params_b = {k: p.copy() for k, p in params_a.items()}
    textbook = {"step": np.array(2)}
    for k in shapes:
        textbook[f"m/{k}"], textbook[f"v/{k}"] = opt_a.moments(k)
    opt_b = AdamW(params_b, lr=1e-2)
    opt_b.load_state_dict(textbook)
    for g in grads[2:]:
        opt_a.step(g)
        opt_b.step(g)
    for k in shapes:
        np.testing.assert_allclose(params_b[k], params_a[k], rtol=1e-13)


@pytest.mark.slow
def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    shapes = {"wte": (7, 5), "h.0.mlp.c_fc.weight": (5, 20), "h.0.mlp.c_fc.bias": (20,), "ln_f.bias": (5,)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    tparams = {k: torch.tensor(p.copy(), requires_grad=True) for k, p in params.items()}
    groups = [{"params": [tparams[k] for k in shapes if default_decay(k, params[k])], "weight_decay": 0.1},
              {"params": [tparams[k] for k in shapes if not default_decay(k, params[k])], "weight_decay": 0.0}]
    topt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, foreach=False, fused=False)
    opt = AdamW(params, lr=1e-2, chunk_size=16)
    for it in range(10):
        grads = {k: rng.standard_normal(s) for k, s in shapes.items()}
        lr = lr_at(it, 1e-2, 1e-3, 3, 10)
        for k, tp in tparams.items():
            tp.grad = torch.tensor(grads[k])
        for g in topt.param_groups:
            g["lr"] = lr
        topt.step()
        opt.step(grads, lr=lr)
    for k in params:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=0)


def test_params_stay_the_same_objects():
    rng = np.random.default_rng(0)
    for make in (lambda p: AdamW(p, threads=2), lambda p: SGD(p, lr=0.1, momentum=0.9)):
        params = {"w": rng.standard_normal((4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
        ids = {k: id(p) for k, p in params.items()}
        before = {k: p.copy() for k, p in params.items()}
        opt = make(params)
        opt.step({k: np.ones_like(p) for k, p in params.items()})
        assert {k: id(p) for k, p in params.items()} == ids
        assert all((params[k] != before[k]).all() for k in params)


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(2)
    shapes = {"w": (6, 5), "b": (5,)}
    grads = [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(5)]
    for make in (lambda p: AdamW(p, lr=1e-2), lambda p: SGD(p, lr=0.1, momentum=0.9)):
        params_a = {k: rng.standard_normal(s) for k, s in shapes.items()}
        opt_a = make(params_a)
        for g in grads[:3]:
            opt_a.step(g)
        buf = io.BytesIO()
        np.savez(buf, **opt_a.state_dict())  # the state survives a trip through .npz
        buf.seek(0)
        state = dict(np.load(buf, allow_pickle=False))
        params_b = {k: p.copy() for k, p in params_a.items()}
        opt_b = make(params_b)
        opt_b.load_state_dict(state)
        assert opt_b.t == 3
        for g in grads[3:]:
            opt_a.step(g)
            opt_b.step(g)
        for k in shapes:
            np.testing.assert_array_equal(params_a[k], params_b[k])


def test_load_state_dict_validates_and_names_the_tensor():
    params = {"w": np.zeros((2, 3)), "b": np.zeros(3)}
    opt = AdamW(params)
    good = {k: v.copy() for k, v in opt.state_dict().items()}
    assert sorted(good) == ["m_sum/b", "m_sum/w", "step", "v_sum/b", "v_sum/w"]
    for broken, match in [
        ({k: v for k, v in good.items() if k != "v_sum/w"}, "missing tensor 'v_sum/w'"),
        ({**good, "m_sum/w": np.zeros((3, 2))}, "'m_sum/w' has shape"),
        ({**good, "m_sum/b": np.zeros(3, np.float32)}, "'m_sum/b' has dtype"),
        ({**good, "m_sum/x": np.zeros(3)}, "unexpected tensor 'm_sum/x'"),
        ({**good, "step": np.zeros(2, np.int64)}, "'step'"),
    ]:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(broken)
    assert opt.t == 0  # nothing was loaded from the broken dicts


def test_bad_hyperparameters_and_grads():
    params = {"w": np.zeros((2, 2))}
    for kwargs, match in [({"lr": 0.0}, "lr"), ({"lr": -1e-3}, "lr"), ({"betas": (1.0, 0.99)}, "beta1"),
                          ({"betas": (0.9, -0.1)}, "beta2"), ({"eps": 0.0}, "eps"), ({"weight_decay": -0.1}, "weight_decay"),
                          ({"lr": float("nan")}, "lr"), ({"threads": 0}, "threads")]:
        with pytest.raises(ValueError, match=match):
            AdamW(params, **kwargs)
    with pytest.raises(ValueError, match="momentum"):
        SGD(params, lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="lr"):
        SGD(params, lr=0.0)
    opt = AdamW(params)
    with pytest.raises(ValueError, match="'w'"):
        opt.step({})
    with pytest.raises(ValueError, match="'w' has shape"):
        opt.step({"w": np.zeros(4)})
    with pytest.raises(ValueError, match="'x'"):
        opt.step({"w": np.zeros((2, 2)), "x": np.zeros(1)})
    with pytest.raises(ValueError, match="C-contiguous"):
        AdamW({"w": np.zeros((3, 2)).T})


def test_make_optimizer_from_train_config():
    params = {"w": np.zeros((2, 2))}
    adamw = make_optimizer(params, TrainConfig(lr=2e-3, beta2=0.95))
    assert isinstance(adamw, AdamW) and (adamw.lr, adamw.beta2, adamw.weight_decay) == (2e-3, 0.95, 0.1)
    mom = make_optimizer(params, TrainConfig(optimizer="momentum", momentum=0.8).to_dict())
    assert isinstance(mom, SGD) and mom.momentum == 0.8
    assert make_optimizer(params, TrainConfig(optimizer="sgd")).momentum == 0.0


# -- clipping ------------------------------------------------------------------------------------

def test_clip_grad_norm_above_threshold():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0], [4.0]])}  # global norm 5
    norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5.0, rel=1e-15)
    new = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    assert new == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(grads["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(grads["b"], [[0.0], [0.8]], rtol=1e-6)


def test_clip_grad_norm_below_threshold_and_off():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0], [4.0]])}
    assert clip_grad_norm(grads, 10.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(grads["a"], [3.0, 0.0])
    assert clip_grad_norm(grads, 0.0) == pytest.approx(5.0)   # measures only
    np.testing.assert_array_equal(grads["b"], [[0.0], [4.0]])


def test_clip_grad_norm_float32_accuracy_and_nonfinite():
    rng = np.random.default_rng(0)
    g = rng.standard_normal(1_000_000).astype(np.float32) * 1e3
    exact = math.sqrt(float(np.sum(g.astype(np.float64) ** 2)))
    assert clip_grad_norm({"g": g}, 0.0) == pytest.approx(exact, rel=1e-5)
    bad = {"g": np.array([1.0, np.inf])}
    assert math.isinf(clip_grad_norm(bad, 1.0))
    assert bad["g"][0] == 1.0  # not scaled: the caller stops on a non-finite norm


# -- schedule -------------------------------------------------------------------------------------

def test_lr_schedule_values():
    lr, min_lr, warm, decay = 1e-3, 1e-4, 100, 2000
    assert lr_at(0, lr, min_lr, warm, decay) == pytest.approx(lr * 1 / 101)
    assert lr_at(99, lr, min_lr, warm, decay) == pytest.approx(lr * 100 / 101)
    assert lr_at(100, lr, min_lr, warm, decay) == pytest.approx(lr)                     # warmup end: peak
    assert lr_at(1050, lr, min_lr, warm, decay) == pytest.approx((lr + min_lr) / 2)     # mid-decay
    quarter = min_lr + 0.5 * (1 + math.cos(math.pi / 4)) * (lr - min_lr)
    assert lr_at(575, lr, min_lr, warm, decay) == pytest.approx(quarter)
    assert lr_at(2000, lr, min_lr, warm, decay) == pytest.approx(min_lr)                # decay end
    assert lr_at(5000, lr, min_lr, warm, decay) == min_lr                               # after
    assert lr_at(0, lr, min_lr, 0, decay) == pytest.approx(lr)                          # no warmup
    assert lr_at(10, lr, min_lr, 10, 10) == min_lr                                      # no room to decay
    values = [lr_at(s, lr, min_lr, warm, decay) for s in range(0, 2100)]
    assert all(a < b for a, b in zip(values[:100], values[1:101]))                      # rising
    assert all(a >= b for a, b in zip(values[100:], values[101:]))                      # then falling
    with pytest.raises(ValueError):
        lr_at(-1, lr, min_lr, warm, decay)


# -- accumulation ---------------------------------------------------------------------------------

def test_accumulate_mean_over_micro_batches():
    rng = np.random.default_rng(3)
    params = {"w": np.zeros((300, 500), np.float32), "b": np.zeros(5, np.float32)}
    acc = zeros_like_grads(params)
    assert all(acc[k].shape == p.shape and acc[k].dtype == p.dtype and not acc[k].any() for k, p in params.items())
    micro = [{k: rng.standard_normal(p.shape).astype(np.float32) for k, p in params.items()} for _ in range(4)]
    for g in micro:
        accumulate(acc, g, scale=0.25)
    for k in params:
        np.testing.assert_allclose(acc[k], np.mean([g[k] for g in micro], axis=0), rtol=1e-5, atol=1e-6)
    total = zeros_like_grads(params)
    accumulate(total, micro[0])
    np.testing.assert_array_equal(total["w"], micro[0]["w"])
    with pytest.raises(ValueError, match="'b'"):
        accumulate(total, {"w": micro[0]["w"]})
