"""The earlier attempt's mistakes, reproduced on purpose so the course can show them failing.

Everything here is BROKEN by design. Nothing in the rest of the library uses it. Each item is small
and says what is wrong and which symptom it produces:

* :func:`mse_embedding_grads` -- a backward pass for a different loss (MSE between embeddings) than
  the cross-entropy the forward pass reports. With an output projection that starts at zero and is
  never touched by that backward, the logits stay exactly 0 and the reported loss stays exactly
  ln V: 9.2103 for V = 10000, the number the earlier logs showed at every epoch.
* :class:`DoubledInputAttentionModel` -- "attention" that returns ``2 * input``: no queries, keys or
  probabilities, so no position ever sees another one.
* :func:`train_without_update` -- a training loop that computes the loss and never changes a weight.
* :func:`naive_softmax` / :func:`epsilon_softmax` -- softmax without subtracting the row max (overflow
  to inf, then nan), and the "fix" of clamping the denominator, which does not help.
"""
from __future__ import annotations

import numpy as np

from ..model import Model, block_names


# ---------------------------------------------------------------------------- 1. the wrong backward
def mse_embedding_grads(model: Model, acts) -> dict:
    """BROKEN: gradients of L2 = mean_n ||E[idx_n] - E[target_n]||^2 instead of the cross-entropy.

    The earlier backward's one quoted line, ``2 * (layer_input - target_embed) / (B * T)``, is the
    first of its two terms, the one at each input token's row; the seeds show no line for the second,
    the same amount subtracted at the target's row, which this function adds so that it is the exact
    gradient of L2 (checked against finite differences). Descending it pulls each input token's
    embedding and the embedding of the token that follows towards each other. Only the embedding
    table gets a gradient; the output projection, the blocks and LayerNorms get zeros.
    The cross-entropy measured in the forward pass is not the function being descended.
    """
    idx, targets = acts.idx, acts.targets
    E = model.params["wte"]  # (V, C)
    B, T = idx.shape
    diff = 2.0 * (E[idx] - E[targets]) / (B * T)  # (B, T, C), dL2/dE[idx]
    dE = np.zeros_like(E)
    np.add.at(dE, idx.reshape(-1), diff.reshape(-1, E.shape[1]))
    np.add.at(dE, targets.reshape(-1), -diff.reshape(-1, E.shape[1]))  # and -dL2/dE[target]
    grads = {k: np.zeros_like(v) for k, v in model.params.items()}
    grads["wte"] = dE
    return grads


def zero_output_head(model: Model) -> None:
    """Set an untied output projection to zero, so every logit is 0 and the loss is exactly ln V.

    Combined with :func:`mse_embedding_grads`, which never gives the head a gradient, the loss can
    never move from ln V.
    """
    if model.cfg.tie_weights:
        raise ValueError("zero_output_head needs an untied head: ModelConfig(tie_weights=False)")
    model.params["lm_head.weight"][...] = 0.0


def sgd_losses(model: Model, x, y, steps: int, lr: float, grad_fn=None) -> list:
    """Plain SGD on one batch for ``steps`` steps; returns the cross-entropy measured at each step.

    ``grad_fn(model, acts)`` computes the gradients (default: the real backward, ``model.backward``).
    """
    grad_fn = grad_fn or (lambda m, acts: m.backward(acts))
    losses = []
    for _ in range(steps):
        _, loss, acts = model.forward(x, y)
        losses.append(loss)
        for name, g in grad_fn(model, acts).items():
            model.params[name] -= lr * g
    return losses


# ---------------------------------------------------------------------------- 2. fake attention
class DoubledInputAttentionModel(Model):
    """BROKEN: the attention branch is replaced by ``2 * input`` (the earlier code's
    ``memcpy(attn_out, input); attn_out += input``).

    Each position's output depends on that position alone, so the model cannot copy, count or look
    anything up in its context: it is a bigram model with extra steps. The attention parameters
    exist but receive zero gradients.
    """

    def _attention_branch(self, l, h, acts, attend):
        return 2.0 * h  # (B, T, C): no queries, no keys, no probabilities

    def _attention_branch_backward(self, l, da, acts, sink):
        n = block_names(l)
        for name in (n.c_attn_w, n.c_attn_b, n.c_proj_w, n.c_proj_b):
            sink.grads[name] = np.zeros_like(self.params[name])
        return 2.0 * da


# ---------------------------------------------------------------------------- 3. no update
def train_without_update(model: Model, batches, lr: float, epochs: int = 1) -> list:
    """BROKEN: computes the loss of every batch and never updates a weight (``(void)learning_rate``).

    Returns the mean loss per epoch: identical epoch after epoch, because nothing changes.
    """
    per_epoch = []
    for _ in range(epochs):
        losses = [model.forward(x, y, train=False)[1] for x, y in batches]
        _ = lr  # the learning rate is accepted and ignored, as in the original
        per_epoch.append(float(np.mean(losses)))
    return per_epoch


# ---------------------------------------------------------------------------- 4. unstable softmax
def naive_softmax(x, axis=-1):
    """BROKEN: exp(x) / sum(exp(x)) without subtracting the max. exp(89) already overflows float32,
    so large logits give inf / inf = nan."""
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def epsilon_softmax(x, axis=-1, eps=1e-20):
    """BROKEN: the proposed patch, clamping the denominator at ``eps``. It prevents a division by zero
    that never happens and leaves the inf / inf = nan of an overflow untouched."""
    e = np.exp(x)
    return e / np.maximum(e.sum(axis=axis, keepdims=True), eps)


def naive_cross_entropy(logits, targets):
    """BROKEN: -log(naive_softmax(logits)[target]), mean over rows: nan for extreme logits."""
    V = logits.shape[-1]
    p = naive_softmax(logits.reshape(-1, V))
    t = targets.reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(-np.mean(np.log(p[np.arange(t.size), t])))
