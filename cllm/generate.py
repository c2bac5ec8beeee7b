"""Text generation: sampling rules and incremental decoding with a key/value cache.

Without a cache, producing token n means running the model over all n tokens of the prefix again,
so generating N tokens costs O(N^2) token-passes. Keys and values of past positions never change (the
model is causal), so the cache keeps them: each new token then costs one token-pass plus attention
over the cached keys. ``generate(..., use_cache=False)`` keeps the plain recomputation, which the
tests and the course compare against.
"""
from __future__ import annotations

import numpy as np

from . import ops
from ._validate import check_int, check_number
from .activations import NullStore
from .model import Model, block_names


# ---------------------------------------------------------------------------- sampling
MAX_NEW_TOKENS = 1_000_000  # the most tokens one call generates (a million tokens take hours on a CPU)


def check_sampling(temperature=1.0, top_k=None, top_p=None, max_new_tokens=None,
                   names=("temperature", "top_k", "top_p", "max_new_tokens")):
    """ValueError (one line, naming the argument as ``names`` spells it) unless ``temperature`` is a
    finite number >= 0, ``top_k`` None or a positive integer, ``top_p`` None or a number in (0, 1] and
    ``max_new_tokens`` None or an integer in [0, MAX_NEW_TOKENS]."""
    check_number(names[0], temperature, 0.0)
    if top_k is not None:
        check_int(names[1], top_k, 1)
    if top_p is not None:
        check_number(names[2], top_p, 0.0, 1.0, lo_open=True)
    if max_new_tokens is not None:
        check_int(names[3], max_new_tokens, 0)
        if max_new_tokens > MAX_NEW_TOKENS:
            raise ValueError(f"{names[3]} must be at most {MAX_NEW_TOKENS:,}, got {max_new_tokens:,}")


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """Choose the next token from ``logits`` (B, V) -> ids (B,).

    ``temperature == 0`` is greedy decoding (argmax). Otherwise the logits are divided by the
    temperature; ``top_k`` keeps the k most likely tokens; ``top_p`` keeps the smallest set of most
    likely tokens whose probability reaches p (nucleus sampling); then one token is drawn.

    Any finite temperature > 0 works: the row maximum is subtracted before dividing, so the largest
    scaled logit is exactly 0 and the others are <= 0 (or -inf when the division overflows, i.e.
    probability 0). A tiny temperature therefore gives greedy decoding, never NaN.
    """
    logits = np.asarray(logits, dtype=np.float64)
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(axis=-1)
    rng = rng if rng is not None else np.random.default_rng()
    with np.errstate(over="ignore"):  # (l - max) / T below -1.8e308 is -inf: probability 0, as meant
        z = (logits - logits.max(axis=-1, keepdims=True)) / temperature  # (B, V), max 0
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]  # (B, 1) k-th largest
        z = np.where(z < kth, -np.inf, z)
    probs = ops.softmax_forward(z)  # (B, V)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1)  # most likely first
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the tokens ranked above
        keep_sorted = before < top_p  # the first token is always kept
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    u = rng.random((probs.shape[0], 1))  # inverse-CDF draw, one per row
    return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), probs.shape[-1] - 1)


# ---------------------------------------------------------------------------- the KV cache
class KVCache:
    """Keys and values of every layer for positions 0 .. length-1: arrays (B, H, max_seq_len, hd)."""

    def __init__(self, model: Model, batch_size: int):
        c = model.cfg
        shape = (batch_size, c.n_heads, c.max_seq_len, c.head_dim)
        self.k = [np.zeros(shape, dtype=model.dtype) for _ in range(c.n_layers)]
        self.v = [np.zeros(shape, dtype=model.dtype) for _ in range(c.n_layers)]
        self.ids = np.zeros((batch_size, c.max_seq_len), dtype=np.int64)  # tokens so far (lattice bias)
        self.length = 0
        self.capacity = c.max_seq_len

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.k + self.v))


def forward_cached(model: Model, idx_new, cache: KVCache):
    """Logits (B, t, V) for new tokens ``idx_new`` (B, t) placed after the ``cache.length`` tokens
    already in the cache, which is extended in place. The same blocks as :meth:`Model.forward`
    (:meth:`Model.block_forward`), with attention reading the cached keys and values (dropout off:
    this is inference)."""
    cfg, P = model.cfg, model.params
    idx_new = np.asarray(idx_new)
    B, t = idx_new.shape
    start, end = cache.length, cache.length + t
    if end > cache.capacity:
        raise ValueError(f"the cache holds {cache.capacity} positions (max_seq_len); {end} were asked for")
    if idx_new.min() < 0 or idx_new.max() >= cfg.vocab_size:
        raise ValueError(f"token ids must lie in [0, {cfg.vocab_size - 1}] (vocab_size)")
    cache.ids[:, start:end] = idx_new
    wte = model.embedding_matrix()  # (V, C)
    x = ops.embedding_forward(idx_new, wte) + P["wpe"][start:end]  # (B, t, C)
    basis = None
    if cfg.attention_bias == "lattice":
        from .lattice.model import lattice_attention_basis
        basis = lattice_attention_basis(model.buffers["lattice.angles"], model.buffers["lattice.freqs"],
                                        cache.ids[:, start:end], cache.ids[:, :end]).astype(model.dtype)  # (B, H, t, end)
    store = NullStore()  # inference: nothing is kept for a backward pass
    for l in range(cfg.n_layers):
        x = model.block_forward(l, x, store, _cached_attention(model, l, cache, start, end, basis))  # (B, t, C)
    h = ops.layernorm_forward(x, P["ln_f.weight"], P["ln_f.bias"])[0]
    head = wte if cfg.tie_weights else P["lm_head.weight"]
    cache.length = end
    return ops.linear_forward(h, head.T)  # (B, t, V)


def _cached_attention(model: Model, l, cache: KVCache, start, end, basis):
    """Block ``l``'s ``attend`` for generation (see :meth:`Model.block_forward`): the new positions'
    keys and values go into the cache, and their queries attend over every cached position."""
    n, H = block_names(l), model.cfg.n_heads

    def attend(qkv):
        q, k, v = ops.attention.split_heads(qkv, H)  # (B, H, t, hd) each
        cache.k[l][:, :, start:end] = k
        cache.v[l][:, :, start:end] = v
        bias = None if basis is None else model.params[n.beta][None, :, None, None] * basis  # (B, H, t, end)
        y, _ = ops.attention.cached_attention_forward(q, cache.k[l][:, :, :end], cache.v[l][:, :, :end], start, bias)
        return y  # (B, t, C)

    return attend


# ---------------------------------------------------------------------------- generation
def generate(model: Model, prompt_ids, max_new_tokens: int, temperature=1.0, top_k=None, top_p=None,
             seed=None, use_cache=True):
    """Continue ``prompt_ids`` ((T,) or (B, T)) by ``max_new_tokens`` tokens; returns all ids (B, T+n).

    With ``use_cache`` each new token costs one incremental step; when the context reaches
    ``max_seq_len`` the cache is refilled from the last ``max_seq_len // 2`` tokens (the model only
    ever sees its last ``max_seq_len`` tokens either way). ``seed`` fixes the sampling. At most
    ``MAX_NEW_TOKENS`` per call; the arguments are checked by :func:`check_sampling`.
    """
    check_sampling(temperature, top_k, top_p, max_new_tokens)
    ids = np.asarray(prompt_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise ValueError("the prompt must hold at least one token")
    if not np.issubdtype(ids.dtype, np.integer):  # 1.7 must not quietly become token 1
        raise ValueError(f"the prompt must hold integer token ids, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)  # (B, T)
    rng = np.random.default_rng(seed)
    T = model.cfg.max_seq_len
    out = [ids]
    context = ids[:, -T:]
    cache = None
    logits = None
    for _ in range(max_new_tokens):
        if not use_cache:
            logits = model.forward(context, train=False)[0][:, -1]  # (B, V), the whole prefix again
        else:
            if cache is None or cache.length + 1 > T:
                context = context[:, -(T // 2):] if cache is not None else context
                cache = KVCache(model, context.shape[0])
                logits = forward_cached(model, context, cache)[:, -1]  # fill the cache with the prefix
            # else: logits of the last generated token were computed by the previous step
        nxt = sample_next(logits, temperature, top_k, top_p, rng)[:, None]  # (B, 1)
        out.append(nxt)
        context = np.concatenate([context, nxt], axis=1)[:, -T:]
        if use_cache and cache.length + 1 <= T:
            logits = forward_cached(model, nxt, cache)[:, -1]
    return np.concatenate(out, axis=1)
