"""Softmax and cross-entropy fused: the loss from log-sum-exp, the gradient as softmax minus one-hot."""
import numpy as np

IGNORE_INDEX = -1  # a target equal to this is left out of the loss and gets no gradient (Model, DataParallel)


def scored_targets(targets, V, ignore_index):
    """Flat targets (N,) safe to index with (ignored rows point at class 0), and the scored-row mask (N,).

    Any ``ignore_index`` works, in range or not (-1, PyTorch's -100, ...); every other target must be a
    class in [0, V), or a ValueError names the first one that is not (numpy would wrap a negative one,
    a compiled kernel would read outside the row).
    """
    t = np.asarray(targets).reshape(-1)  # (N,)
    valid = np.ones(t.shape, dtype=bool) if ignore_index is None else t != ignore_index  # (N,)
    bad = valid & ((t < 0) | (t >= V))
    if bad.any():
        extra = "" if ignore_index is None else f" or equal ignore_index ({ignore_index})"
        raise ValueError(f"targets must be classes in [0, {V}){extra}; found {t[bad][0]}")
    return np.where(valid, t, 0), valid


def cross_entropy_forward(logits, targets, ignore_index=None):
    """Mean negative log-likelihood of ``targets`` (...) under ``softmax(logits)`` (..., V).

    loss_n = logsumexp(logits_n) - logits_n[target_n], averaged over the rows whose target is not
    ``ignore_index``. Returns (loss as a Python float, probs (..., V) in the logits' dtype).
    The row max is subtracted before exponentiating, so logits of +-1e4 give a finite loss.
    """
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V)
    t, valid = scored_targets(targets, V, ignore_index)  # (N,), (N,)
    m = z.max(axis=1, keepdims=True)  # (N, 1)
    probs = z - m  # (N, V), every entry <= 0
    np.exp(probs, out=probs)
    sumexp = probs.sum(axis=1, keepdims=True)  # (N, 1), >= 1 because the max term is exp(0)
    probs /= sumexp
    rows = np.arange(z.shape[0])
    # -log p_target = logsumexp - z_target = m + log(sumexp) - z_target, in float64 for the average
    nll = (m[:, 0] + np.log(sumexp[:, 0])).astype(np.float64) - z[rows, t]  # (N,)
    n_valid = int(valid.sum())
    loss = float(nll[valid].sum() / n_valid) if n_valid else 0.0
    return loss, probs.reshape(logits.shape)


def cross_entropy_backward(probs, targets, ignore_index=None):
    """d loss / d logits = (softmax - onehot(target)) / N_valid; rows with the ignore index get 0."""
    V = probs.shape[-1]
    t, valid = scored_targets(targets, V, ignore_index)  # (N,), (N,)
    dlogits = probs.reshape(-1, V).copy()  # (N, V)
    dlogits[np.arange(t.shape[0]), t] -= 1.0  # softmax - onehot
    n_valid = int(valid.sum())
    if ignore_index is not None:
        dlogits[~valid] = 0.0
    dlogits *= 1.0 / max(n_valid, 1)
    return dlogits.reshape(probs.shape)
