"""Every op's backward against centred finite differences in float64 (relative error < 1e-7 per
tensor), with random non-trivial inputs and parameters; and the same ops in float32."""
import numpy as np
import pytest

from cllm import ops
from cllm.gradcheck import check_op, relative_error

TOL = 1e-7


def assert_report(report):
    bad = {k: v for k, v in report.errors().items() if not v < TOL}
    assert not bad, f"relative errors above {TOL}: {bad}\n{report}"
    assert all(r.checked > 0 for r in report.rows)


def test_linear(rng):
    inputs = dict(x=rng.standard_normal((3, 5, 7)), w=rng.standard_normal((7, 4)), b=rng.standard_normal(4))

    def bwd(dout):
        dx, dw, db = ops.linear_backward(dout, inputs["x"], inputs["w"])
        return dict(x=dx, w=dw, b=db)

    assert_report(check_op(ops.linear_forward, bwd, inputs))


def test_layernorm(rng):
    inputs = dict(x=rng.standard_normal((3, 4, 6)) * 2 + 0.5, w=rng.standard_normal(6), b=rng.standard_normal(6))

    def fwd(x, w, b):
        return ops.layernorm_forward(x, w, b)[0]

    def bwd(dout):
        _, mean, rstd = ops.layernorm_forward(**inputs)
        dx, dw, db = ops.layernorm_backward(dout, inputs["x"], inputs["w"], mean, rstd)
        return dict(x=dx, w=dw, b=db)

    assert_report(check_op(fwd, bwd, inputs))


def test_layernorm_statistics(rng):
    x = rng.standard_normal((5, 9)) * 3 + 1
    out, mean, rstd = ops.layernorm_forward(x, np.ones(9), np.zeros(9))
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(-1), 1 / (1 + 1e-5 * rstd**2), rtol=1e-10)
    np.testing.assert_allclose(mean, x.mean(-1))
    np.testing.assert_allclose(rstd, 1 / np.sqrt(x.var(-1) + 1e-5))


@pytest.mark.parametrize("name", ["gelu", "tanh", "relu"])
def test_activation(rng, name):
    inputs = dict(x=rng.standard_normal((4, 10)) * 2)
    assert_report(check_op(lambda x: ops.activation_forward(x, name),
                           lambda d: dict(x=ops.activation_backward(d, inputs["x"], name)), inputs))


def test_gelu_matches_formula():
    x = np.linspace(-4, 4, 17)
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(ops.gelu_forward(x), expected, rtol=1e-14)


def test_embedding_and_repeats(rng):
    V, C = 6, 5
    idx = np.array([[0, 3, 3, 5], [3, 1, 0, 3]])  # repeated ids must accumulate
    inputs = dict(table=rng.standard_normal((V, C)))
    report = check_op(lambda table: ops.embedding_forward(idx, table),
                      lambda d: dict(table=ops.embedding_backward(d, idx, V)), inputs)
    assert_report(report)
    dout = np.ones((2, 4, C))
    assert ops.embedding_backward(dout, idx, V)[3, 0] == 4.0  # token 3 appears four times


def test_position_embedding(rng):
    T, maxT, C = 5, 8, 3
    inputs = dict(table=rng.standard_normal((maxT, C)))
    B = 4

    def fwd(table):
        return np.broadcast_to(ops.position_forward(T, table), (B, T, C)) * 1.0

    report = check_op(fwd, lambda d: dict(table=ops.position_backward(d, maxT)), inputs)
    assert_report(report)


def test_softmax(rng):
    inputs = dict(x=rng.standard_normal((3, 7)) * 3)
    assert_report(check_op(ops.softmax_forward,
                           lambda d: dict(x=ops.softmax_backward(d, ops.softmax_forward(inputs["x"]))), inputs))
    np.testing.assert_allclose(np.exp(ops.log_softmax(inputs["x"])), ops.softmax_forward(inputs["x"]), rtol=1e-13)


@pytest.mark.parametrize("with_bias", [False, True])
def test_attention(rng, with_bias):
    B, T, H, hd = 2, 5, 3, 4
    C = H * hd
    inputs = dict(qkv=rng.standard_normal((B, T, 3 * C)))
    if with_bias:
        inputs["bias"] = rng.standard_normal((B, H, T, T))

    def fwd(qkv, bias=None):
        return ops.attention_forward(qkv, H, bias)[0]

    def bwd(dout):
        _, probs, _ = ops.attention_forward(**{**dict(n_heads=H), **inputs})
        dqkv, dscores = ops.attention_backward(dout, inputs["qkv"], probs, H, return_dscores=True)
        out = dict(qkv=dqkv)
        if with_bias:
            out["bias"] = dscores
        return out

    report = check_op(fwd, bwd, inputs)
    assert_report(report)
    if with_bias:  # the masked (future) scores carry no gradient
        _, probs, _ = ops.attention_forward(inputs["qkv"], H, inputs["bias"])
        _, dscores = ops.attention_backward(rng.standard_normal((B, T, C)), inputs["qkv"], probs, H, return_dscores=True)
        assert np.all(dscores[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)


def test_attention_dropout_fixed_mask(rng):
    B, T, H, hd = 2, 4, 2, 3
    inputs = dict(qkv=rng.standard_normal((B, T, 3 * H * hd)))

    def fwd(qkv):
        return ops.attention_forward(qkv, H, None, 0.3, np.random.default_rng(5))[0]

    def bwd(dout):
        _, probs, mask = ops.attention_forward(inputs["qkv"], H, None, 0.3, np.random.default_rng(5))
        return dict(qkv=ops.attention_backward(dout, inputs["qkv"], probs, H, mask))

    assert_report(check_op(fwd, bwd, inputs))


def test_attention_matches_loop_reference(rng):
    """The batched op against a plain loop over batch, head and query position."""
    B, T, H, hd = 2, 6, 2, 3
    C = H * hd
    qkv = rng.standard_normal((B, T, 3 * C))
    y, probs, _ = ops.attention_forward(qkv, H)
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    ref = np.zeros((B, T, C))
    for b in range(B):
        for h in range(H):
            s = slice(h * hd, (h + 1) * hd)
            for t in range(T):
                scores = k[b, :t + 1, s] @ q[b, t, s] / np.sqrt(hd)
                w = np.exp(scores - scores.max())
                w /= w.sum()
                ref[b, t, s] = w @ v[b, :t + 1, s]
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)
    assert np.all(probs[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)


def test_dropout(rng):
    x = rng.standard_normal((50, 40))
    out, mask = ops.dropout_forward(x, 0.0, rng)
    assert out is x and mask is None  # p = 0 is the identity
    inputs = dict(x=x)
    fwd = lambda x: ops.dropout_forward(x, 0.25, np.random.default_rng(3))[0]
    mask = ops.dropout_forward(x, 0.25, np.random.default_rng(3))[1]
    assert_report(check_op(fwd, lambda d: dict(x=ops.dropout_backward(d, mask)), inputs))
    kept = mask > 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(mask[kept], 1 / 0.75)


def test_residual(rng):
    inputs = dict(x=rng.standard_normal((2, 3)), fx=rng.standard_normal((2, 3)))

    def bwd(d):
        dx, dfx = ops.residual_backward(d)
        return dict(x=dx, fx=dfx)

    assert_report(check_op(ops.residual_forward, bwd, inputs))


@pytest.mark.parametrize("ignore", [None, 2, -1, -100])
def test_cross_entropy(rng, ignore):
    logits = rng.standard_normal((3, 4, 7)) * 2
    targets = rng.integers(0, 7, (3, 4))
    targets[0, 0] = 2
    if ignore is not None and ignore < 0:
        targets[1, :3] = ignore                        # an ignore index outside [0, V), as PyTorch's -100
    inputs = dict(logits=logits)
    report = check_op(lambda logits: np.array(ops.cross_entropy_forward(logits, targets, ignore)[0]),
                      lambda d: dict(logits=d * ops.cross_entropy_backward(
                          ops.cross_entropy_forward(logits, targets, ignore)[1], targets, ignore)), inputs)
    assert_report(report)
    # the value itself: mean of -log softmax at the targets
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = np.ones_like(targets, bool) if ignore is None else targets != ignore
    nll = -np.take_along_axis(lp, np.where(keep, targets, 0)[..., None], -1)[..., 0]
    assert abs(ops.cross_entropy_forward(logits, targets, ignore)[0] - nll[keep].mean()) < 1e-12
    d = ops.cross_entropy_backward(ops.cross_entropy_forward(logits, targets, ignore)[1], targets, ignore)
    assert np.all(d[~keep] == 0) and np.all(d[keep] != 0)  # ignored rows get no gradient, scored rows do


def test_cross_entropy_rejects_targets_outside_the_vocabulary(rng):
    logits = rng.standard_normal((2, 5))
    probs = ops.cross_entropy_forward(logits, np.array([1, 4]))[1]
    for bad, ignore in (([1, 5], None), ([-1, 2], None), ([-2, 2], -1), ([7, -100], -100)):
        with pytest.raises(ValueError, match=r"targets must be classes in \[0, 5\)"):
            ops.cross_entropy_forward(logits, np.array(bad), ignore)
        with pytest.raises(ValueError, match=r"targets must be classes in \[0, 5\)"):
            ops.cross_entropy_backward(probs, np.array(bad), ignore)


def test_cross_entropy_extreme_logits():
    for dtype in (np.float32, np.float64):
        logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype=dtype)
        loss, probs = ops.cross_entropy_forward(logits, np.array([1, 2]))
        d = ops.cross_entropy_backward(probs, np.array([1, 2]))
        assert np.isfinite(loss) and np.all(np.isfinite(d))
        assert abs(loss - 1e4) < 1  # row 0 misses its target by 2e4, row 1 is right: mean 1e4
        assert probs.dtype == dtype and d.dtype == dtype


def test_float32_ops_keep_dtype_and_agree(rng):
    x64 = rng.standard_normal((2, 4, 12))
    w64 = rng.standard_normal((12, 36)) * 0.3
    x32, w32 = x64.astype(np.float32), w64.astype(np.float32)
    for f in (lambda x, w: ops.linear_forward(x, w),
              lambda x, w: ops.attention_forward(ops.linear_forward(x, w), 3)[0],
              lambda x, w: ops.gelu_forward(ops.linear_forward(x, w)),
              lambda x, w: ops.layernorm_forward(x, w[:, 0], w[:, 1])[0]):
        a, b = f(x32, w32), f(x64, w64)
        assert a.dtype == np.float32
        assert relative_error(a, b) < 1e-5


def test_relative_error_definition():
    assert relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert relative_error([0.0], [0.0]) == 0.0
    assert abs(relative_error([1.0], [-1.0]) - 1.0) < 1e-15
