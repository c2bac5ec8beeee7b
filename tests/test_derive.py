"""The derive-it-yourself checker: right answers pass, and each kind of wrong answer is named."""
import numpy as np
import pytest

from cllm.course import derive


# ---- reference fill-ins, written the way a learner would (not by calling the library)
def ce_backward(logits, targets):
    B, T, V = logits.shape
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)  # (B, T, V)
    p[np.arange(B)[:, None], np.arange(T)[None, :], targets] -= 1.0
    return p / (B * T)


def softmax_backward(dprobs, probs):
    return probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))


def layernorm_backward(dout, x, w, mean, rstd):
    xhat = (x - mean[..., None]) * rstd[..., None]
    g = dout * w
    dx = rstd[..., None] * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, (dout * xhat).sum(axis=(0, 1)), dout.sum(axis=(0, 1))


@pytest.mark.parametrize("name, fn", [("cross_entropy", ce_backward), ("softmax", softmax_backward),
                                      ("layernorm", layernorm_backward)])
def test_a_correct_backward_passes(name, fn):
    report = derive.check(name, fn)
    assert report.ok, str(report)
    assert all(t.vs_numeric < 1e-8 and t.vs_library < 1e-12 for t in report.tensors)
    assert "correct" in str(report)


def test_stub_is_not_filled_in_and_not_ok():
    def stub(logits, targets):
        raise NotImplementedError

    report = derive.check("cross_entropy", stub)
    assert not report.ok and report.status == "not filled in"
    assert str(report).startswith("cross_entropy backward: not filled in yet")


def test_forgotten_mean_is_reported_as_a_constant_factor():
    def no_mean(logits, targets):
        B, T, _ = logits.shape
        return ce_backward(logits, targets) * (B * T)

    report = derive.check("cross_entropy", no_mean)
    assert not report.ok and report.wrong() == ["dlogits"]
    assert report.tensors[0].scale == pytest.approx(6.0)
    assert "6 times the right answer" in str(report)


def test_flipped_sign_is_named():
    report = derive.check("softmax", lambda d, p: -softmax_backward(d, p))
    assert not report.ok and "sign is flipped" in str(report)


def test_layernorm_names_only_the_wrong_tensor():
    def wrong_dw(dout, x, w, mean, rstd):
        dx, dw, db = layernorm_backward(dout, x, w, mean, rstd)
        return dx, (dout * x).sum(axis=(0, 1)), db  # x instead of xhat

    report = derive.check("layernorm", wrong_dw)
    assert report.wrong() == ["dw"]
    dw = report.tensors[1]
    assert dw.vs_numeric > 1e-2 and dw.vs_library > 1e-2 and dw.scale is None
    assert "dw: largest difference" in str(report)


def test_softmax_that_leaks_into_masked_entries_fails():
    def leaks(dprobs, probs):  # forgets the product with p: masked entries get a gradient
        return dprobs - (dprobs * probs).sum(axis=-1, keepdims=True)

    assert derive.check("softmax", leaks).wrong() == ["dscores"]


def test_a_dropped_term_is_caught_by_finite_differences():
    def no_variance_term(dout, x, w, mean, rstd):
        g = dout * w
        dx = rstd[..., None] * (g - g.mean(-1, keepdims=True))
        _, dw, db = layernorm_backward(dout, x, w, mean, rstd)
        return dx, dw, db

    report = derive.check("layernorm", no_variance_term)
    assert report.wrong() == ["dx"] and report.tensors[0].vs_numeric > 1e-3


@pytest.mark.parametrize("fn, words", [
    (lambda d, x, w, m, r: (d, w), "return 3 arrays"),
    (lambda d, x, w, m, r: (d[0], w, w), "dx has shape"),
    (lambda d, x, w, m, r: (d * np.nan, w, w), "non-finite"),
    (lambda d, x, w, m, r: (None, w, w), "dx is None"),
    (lambda d, x, w, m, r: 1 / 0, "raised ZeroDivisionError"),
])
def test_malformed_answers_get_one_line(fn, words):
    report = derive.check("layernorm", fn)
    assert not report.ok and words in str(report) and "\n" not in str(report)


def test_the_learner_cannot_change_the_problem():
    def scribbles(logits, targets):
        g = ce_backward(logits, targets)
        logits[...] = 0.0
        targets[...] = 0
        return g

    assert derive.check("cross_entropy", scribbles).ok


def test_unknown_exercise_is_a_value_error():
    with pytest.raises(ValueError, match="unknown exercise 'attention'"):
        derive.check("attention", ce_backward)
    assert derive.signature("layernorm") == "backward(dout, x, w, mean, rstd) -> (dx, dw, db)"
