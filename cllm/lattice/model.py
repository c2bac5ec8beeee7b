"""The lattice inside the model: prime embeddings, lattice-biased attention, a GCD regulariser.

Prime embeddings (``ModelConfig(embedding="lattice")``)::

    E = F W + R            F (V, k) fixed prime features of each token's code,
                           W (k, C) learned projection ("lattice.proj"), R (V, C) learned residual ("wte")

so tokens start where their primes put them (R starts at 0) and training moves them. Any other fixed
F of shape (V, k) can be given as ``Model(cfg, features=F)`` (the clocks of the grokking experiment, a
random control); only the buffer changes, the parameters and their initial values do not. E is one
ordinary (V, C) matrix afterwards: the lookup and a tied output head both use it, and its gradient
dE splits into dW = F^T dE and dR = dE.

Lattice attention (``ModelConfig(attention_bias="lattice")``)::

    scores_h = Q K^T / sqrt(d) + beta_h B_h + causal mask,   B_h[i, j] = cos(phi_h (theta_i - theta_j))

with theta a token's clock angle 2 pi (code mod 12) / 12, phi_h = h + 1 a fixed frequency per head and
beta_h learned (starting at 0, where this is exactly plain attention).

The GCD regulariser (``ModelConfig(lattice_reg=lambda)``) adds
lambda * sum_{a,b} s(a, b) |e_a - e_b|^2 to the cross-entropy, s the GCD similarity of the two tokens'
codes; with L = D - S the graph Laplacian this is 2 lambda tr(E^T L E), gradient 4 lambda L E.
"""
from __future__ import annotations

import re

import numpy as np

MODULUS = 12  # clock positions for the attention angle
_WORD_TOKEN = re.compile(r"[^\W\d]+")  # the word branch of the word tokenizer's pattern


def token_codes(cfg) -> np.ndarray:
    """Each token's integer code: ``cfg.lattice_codes`` or, by default, the (i+1)-th prime for token i."""
    from .primes import first_primes

    if cfg.lattice_codes is not None:
        return np.asarray(cfg.lattice_codes, dtype=np.int64)  # (V,)
    return first_primes(cfg.vocab_size)  # (V,)


def frequency_rank_codes(train_ids, vocab_size) -> tuple:
    """Codes by frequency rank: the most frequent token gets 2, the next 3, then 5, ... (ties by id)."""
    from .primes import first_primes

    counts = np.bincount(np.asarray(train_ids).reshape(-1), minlength=vocab_size)
    order = np.lexsort((np.arange(vocab_size), -counts))  # ids by descending count
    codes = np.empty(vocab_size, dtype=np.int64)
    codes[order] = first_primes(vocab_size)
    return tuple(int(c) for c in codes)


def word_lattice_codes(vocab, train_ids) -> tuple:
    """A distinct integer code >= 2 for every token of a word vocabulary (``vocab[0]`` is ``<unk>``).

    Word tokens (runs of letters / underscores) get composite codes ``p_stem * p_affix`` from
    :func:`cllm.lattice.codes.build_codebook`, stems ranked by their training-split counts. Every other
    token (whitespace runs, punctuation, numbers, ``<unk>``) gets a prime of its own, taken after all the
    primes the words use and assigned by training frequency (ties by id). A prime is never a product of
    two primes, so all codes are distinct, and these tokens share no factor with anything else.
    """
    from .codes import AFFIX_CLASSES, build_codebook
    from .primes import first_primes

    V = len(vocab)
    counts = np.bincount(np.asarray(train_ids).reshape(-1), minlength=V)
    is_word = np.array([i > 0 and _WORD_TOKEN.fullmatch(t) is not None for i, t in enumerate(vocab)])
    word_ids = np.flatnonzero(is_word)
    book = build_codebook([vocab[i] for i in word_ids], [int(counts[i]) for i in word_ids])
    codes = np.zeros(V, dtype=np.int64)
    codes[word_ids] = [book.codes[vocab[i]] for i in word_ids]
    other = np.flatnonzero(~is_word)
    other = other[np.lexsort((other, -counts[other]))]                   # by descending count, then id
    used = len(AFFIX_CLASSES) + len(book.stem_prime)
    codes[other] = first_primes(used + len(other))[used:]
    return tuple(int(c) for c in codes)


def tokenizer_codes(tokenizer, train_ids) -> tuple:
    """The lattice codes a tokenizer's tokens get: frequency-rank primes for characters
    (:func:`frequency_rank_codes`), root x affix composites for words (:func:`word_lattice_codes`)."""
    if getattr(tokenizer, "kind", None) == "word":
        return word_lattice_codes(tokenizer.vocab, train_ids)
    return frequency_rank_codes(train_ids, tokenizer.vocab_size)


def lattice_buffers(cfg) -> dict:
    """The fixed (not learned) tensors the lattice options need, in the model's dtype."""
    from .features import prime_features
    from .similarity import gcd_similarity_matrix

    dtype = np.dtype(cfg.dtype)
    codes = token_codes(cfg)
    out = {"lattice.codes": codes}
    if cfg.embedding == "lattice":
        out["lattice.features"] = prime_features(codes, cfg.lattice_features).astype(dtype)  # (V, k)
    if cfg.attention_bias == "lattice":
        out["lattice.angles"] = 2.0 * np.pi * np.mod(codes, MODULUS) / MODULUS  # (V,) float64
        out["lattice.freqs"] = np.arange(1, cfg.n_heads + 1, dtype=np.float64)  # (H,) phi_h
    if cfg.lattice_reg > 0:
        S = gcd_similarity_matrix(codes)  # (V, V), 1 on the diagonal
        out["lattice.laplacian"] = (np.diag(S.sum(axis=1)) - S).astype(dtype)  # (V, V), L = D - S
    return out


# ---------------------------------------------------------------------------- prime embeddings
def lattice_embedding_forward(F, W, R):
    """E = F W + R: (V, k) @ (k, C) + (V, C) -> (V, C)."""
    return F @ W + R


def lattice_embedding_backward(dE, F):
    """Return (dW, dR) from dE (V, C): dW = F^T dE (k, C), dR = dE."""
    return F.T @ dE, dE


def init_lattice_params(params, cfg, rng):
    """Initial values: W with std 0.02 / sqrt(k) (F's columns have unit RMS, so F W has entries of
    std about 0.02, like a learned embedding) and R = 0 (tokens start at their lattice position)."""
    params["lattice.proj"][...] = rng.normal(0.0, 0.02 / np.sqrt(cfg.lattice_features), params["lattice.proj"].shape)
    params["wte"][...] = 0.0


# ---------------------------------------------------------------------------- lattice attention
def lattice_attention_basis(angles, freqs, idx_q, idx_k=None):
    """B[b, h, i, j] = cos(phi_h (theta[idx_q[b, i]] - theta[idx_k[b, j]])): (B, H, Tq, Tk).

    Computed as cos a cos b + sin a sin b, two batched outer products instead of T^2 cosines.
    """
    idx_k = idx_q if idx_k is None else idx_k
    a = freqs[None, :, None] * angles[idx_q][:, None, :]  # (B, H, Tq)
    b = freqs[None, :, None] * angles[idx_k][:, None, :]  # (B, H, Tk)
    return np.cos(a)[..., :, None] * np.cos(b)[..., None, :] + np.sin(a)[..., :, None] * np.sin(b)[..., None, :]


# ---------------------------------------------------------------------------- the GCD regulariser
def gcd_regulariser(E, laplacian, lam):
    """lam * sum_{a,b} s(a,b) |e_a - e_b|^2 = 2 lam tr(E^T L E); returns (value, dE = 4 lam L E)."""
    LE = laplacian @ E  # (V, V) @ (V, C) -> (V, C)
    return float(2.0 * lam * np.sum(E * LE)), (4.0 * lam) * LE
