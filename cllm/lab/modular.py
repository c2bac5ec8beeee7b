"""Exact datasets for ``a op b mod m`` and the fixed feature matrices of the grokking experiment.

Every pair (a, b) appears exactly once; a seeded permutation splits the pairs by a training fraction,
so no pair is in both splits. A pair is the sequence of three tokens ``a b =``; the vocabulary is the
numbers 0 .. m - 1 (token id = the number) and ``=`` (token id m), V = m + 1. The target of the ``=``
position is the answer c; the targets of the other two positions are ``IGNORE_INDEX``, so the model's
cross-entropy is the loss at the answer position only (:meth:`cllm.model.Model.forward`)::

    x = [a, b, m]            y = [-1, -1, c]          c = a op b mod m

Operations: ``add`` (a + b), ``sub`` (a - b), ``mul`` (a b), and ``div`` (a b^-1, b != 0, prime m only:
b must be invertible for every b != 0).

It lives in the lab (not the core library) because only the grokking experiment and its notebook use it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import check_int, check_number
from ..ops.cross_entropy import IGNORE_INDEX

OPS = ("add", "sub", "mul", "div")
SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
FEATURE_KINDS = ("clock", "crt", "random")


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def _check_modulus(m, op):
    check_int("modulus", m, 2)
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
    if op == "div" and not is_prime(int(m)):
        raise ValueError(f"division mod {m} needs a prime modulus (not every b != 0 has an inverse mod {m})")
    return int(m)


def modular_table(m: int, op: str = "add") -> tuple:
    """Every pair once: (a, b, c) int64 arrays of length m^2 (m (m - 1) for ``div``), c = a op b mod m,
    ordered by a, then b."""
    m = _check_modulus(m, op)
    a, b = np.meshgrid(np.arange(m), np.arange(1 if op == "div" else 0, m), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)                                  # (P,)
    if op == "add":
        c = (a + b) % m
    elif op == "sub":
        c = (a - b) % m
    elif op == "mul":
        c = (a * b) % m
    else:
        inv = np.array([pow(int(x), -1, m) for x in range(1, m)])         # b^-1 for b = 1 .. m - 1
        c = (a * inv[b - 1]) % m
    return a.astype(np.int64), b.astype(np.int64), c.astype(np.int64)


@dataclass
class ModularData:
    """One split of the table of ``a op b mod m``: inputs (N, 3) and targets (N, 3) per split."""

    m: int
    op: str
    train_frac: float
    seed: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def vocab_size(self) -> int:
        return self.m + 1                                                # the numbers and "="

    @property
    def eq_token(self) -> int:
        return self.m


def encode(a, b, c, m) -> tuple:
    """(x, y) of shape (N, 3): x = [a, b, m] (m is the "=" token), y = [IGNORE, IGNORE, c]."""
    a = np.asarray(a, dtype=np.int64)
    x = np.stack([a, np.asarray(b, dtype=np.int64), np.full_like(a, m)], axis=1)                 # (N, 3)
    y = np.stack([np.full_like(a, IGNORE_INDEX), np.full_like(a, IGNORE_INDEX),
                  np.asarray(c, dtype=np.int64)], axis=1)                                         # (N, 3)
    return x, y


def make_dataset(m: int, op: str = "add", train_frac: float = 0.3, seed: int = 0) -> ModularData:
    """All pairs of ``a op b mod m``, split at random (seeded) into ``round(train_frac * P)`` training pairs
    and the rest for validation; both splits hold at least one pair."""
    a, b, c = modular_table(m, op)
    check_number("train_frac", train_frac, 0.0, 1.0, lo_open=True, hi_open=True)
    check_int("seed", seed, 0)
    P = a.size
    n_train = min(max(int(round(train_frac * P)), 1), P - 1)
    perm = np.random.default_rng([int(seed), 5]).permutation(P)          # (P,)
    tr, va = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    x, y = encode(a, b, c, m)
    return ModularData(int(m), op, float(train_frac), int(seed), x[tr], y[tr], x[va], y[va])


def accuracy(logits, targets) -> float:
    """Share of the scored positions (targets != IGNORE_INDEX) where the largest logit is the target.
    ``logits`` (..., V), ``targets`` (...) of ints."""
    logits, targets = np.asarray(logits), np.asarray(targets)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} do not match")
    scored = targets != IGNORE_INDEX
    if not scored.any():
        raise ValueError("no scored targets (every target is IGNORE_INDEX)")
    return float(np.mean(logits.argmax(axis=-1)[scored] == targets[scored]))


# ------------------------------------------------------------------------------ fixed features F
def task_features(m: int, kind: str, seed: int = 0, rank=None) -> np.ndarray:
    """F of E = F W + R for the task's m + 1 tokens: (m + 1, k), the last row (the "=" token) zero.

    ``clock``: every frequency of the clock mod m (:func:`cllm.lattice.features.fourier_features`,
    k = m - 1); ``crt``: one clock per prime power of m (:func:`~cllm.lattice.features.crt_clock_features`,
    k = sum(q - 1); for a prime m it is the clock); ``random``: a fixed random Gaussian F with unit-RMS
    columns and ``rank`` columns (default m - 1, the clock's rank), seeded by ``[seed, 4]``.
    """
    from ..lattice.features import crt_clock_features, fourier_features, random_features

    if kind not in FEATURE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
    v = np.arange(m)
    if kind == "clock":
        F = fourier_features(v, m)                                       # (m, m - 1)
    elif kind == "crt":
        F = crt_clock_features(v, m)                                     # (m, sum(q - 1))
    else:
        F = random_features((m, m - 1 if rank is None else int(rank)), np.random.default_rng([seed, 4]))
    return np.concatenate([F, np.zeros((1, F.shape[1]))], axis=0)        # (m + 1, k)


def fourier_spectrum(E, m: int) -> np.ndarray:
    """Energy of the embedding rows of the numbers, E[:m] (m, C), per frequency k = 0 .. m // 2:
    ``|sum_a E[a] exp(-2 pi i k a / m)|^2`` summed over the C columns, with k and m - k (the same real
    clock) added together. Entry 0 is the mean's energy. Shape (m // 2 + 1,)."""
    X = np.fft.rfft(np.asarray(E, dtype=np.float64)[:m], axis=0)        # (m // 2 + 1, C)
    energy = np.sum(np.abs(X) ** 2, axis=1)                              # (m // 2 + 1,)
    energy[1:(m + 1) // 2] *= 2.0                                       # k and m - k; not k = m / 2
    return energy


def top_frequencies(spectrum, n: int = 5) -> tuple:
    """(the n frequencies k >= 1 with the most energy, largest first; their share of the energy of all
    k >= 1)."""
    s = np.asarray(spectrum, dtype=np.float64)[1:]
    order = np.argsort(-s, kind="stable")[:n]
    total = s.sum()
    return [int(k) + 1 for k in order], float(s[order].sum() / total) if total > 0 else float("nan")
