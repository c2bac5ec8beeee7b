"""Finite-difference gradient checks: the independent reference every hand-written backward answers to.

For each tensor the numerical gradient is the centred difference

    dL/dw_i ~ (L(w + h e_i) - L(w - h e_i)) / (2 h),    h = 1e-5, in float64,

whose error is O(h^2) ~ 1e-10 relative to the curvature, so in float64 a correct backward agrees to
about 1e-8 or better. The relative error of a tensor is |a - n| / (|a| + |n|) with Euclidean norms over
the checked entries: below 1e-7 is healthy, above 1e-4 is a bug.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sys
import types

import numpy as np

HEALTHY = 1e-7
BUG = 1e-4


def relative_error(a, n) -> float:
    """|a - n| / (|a| + |n|) with Euclidean norms; 0 when both are exactly zero."""
    a = np.asarray(a, dtype=np.float64).ravel()
    n = np.asarray(n, dtype=np.float64).ravel()
    denom = np.linalg.norm(a) + np.linalg.norm(n)
    return 0.0 if denom == 0.0 else float(np.linalg.norm(a - n) / denom)


@dataclass
class GradcheckRow:
    name: str
    shape: tuple
    checked: int
    max_abs_diff: float
    rel_error: float


@dataclass
class GradcheckReport:
    """Per-tensor results of :func:`gradcheck`; prints as a table."""

    rows: list = field(default_factory=list)

    @property
    def max_rel_error(self) -> float:
        return max((r.rel_error for r in self.rows), default=0.0)

    def errors(self) -> dict:
        """name -> relative error."""
        return {r.name: r.rel_error for r in self.rows}

    def ok(self, tol=HEALTHY) -> bool:
        return all(r.rel_error < tol for r in self.rows)

    def table(self, digits=1) -> str:
        """Fixed-width table. ``digits`` is the number of significant digits after the first in the
        error columns (a rounded table is what a notebook compares between runs)."""
        width = max([len("tensor")] + [len(r.name) for r in self.rows])
        lines = [f"{'tensor':<{width}}  {'shape':<14} {'checked':>7}  {'max |a-n|':>9}  {'rel error':>9}  verdict"]
        for r in self.rows:
            verdict = "ok" if r.rel_error < HEALTHY else ("BUG" if r.rel_error > BUG else "check")
            lines.append(f"{r.name:<{width}}  {str(r.shape):<14} {r.checked:>7}  "
                         f"{r.max_abs_diff:>9.{digits}e}  {r.rel_error:>9.{digits}e}  {verdict}")
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def _entries(shape, max_entries, rng):
    size = int(np.prod(shape))
    if max_entries is None or size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_entries, replace=False))


def numeric_gradient(loss_fn, array, h=1e-5, entries=None) -> np.ndarray:
    """Centred differences (L(w + h e_i) - L(w - h e_i)) / 2h of ``loss_fn()`` for the flat ``entries``
    of ``array`` (default: all, returned in ``array``'s shape), nudging it in place and restoring each
    entry exactly. An entry of -inf (a masked score) stays -inf when nudged, so it gets 0."""
    flat = array.reshape(-1)  # a view: writing to it changes the array
    if not np.shares_memory(flat, array):
        raise ValueError("cannot perturb a non-contiguous array in place")
    chosen = np.arange(array.size) if entries is None else entries
    numeric = np.empty(len(chosen))
    for j, i in enumerate(chosen):
        old = flat[i]
        flat[i] = old + h
        lp = float(loss_fn())
        flat[i] = old - h
        lm = float(loss_fn())
        flat[i] = old  # restore exactly
        numeric[j] = (lp - lm) / (2.0 * h)
    return numeric.reshape(array.shape) if entries is None else numeric


def gradcheck(loss_fn, params: dict, analytic: dict, h=1e-5, max_entries=None, seed=0, names=None) -> GradcheckReport:
    """Compare ``analytic`` gradients with centred finite differences of ``loss_fn``.

    ``loss_fn()`` returns the scalar loss for the current values of the arrays in ``params``; each
    checked entry is nudged in place by +-h and restored exactly afterwards. ``max_entries`` checks a
    random subset (seeded by ``seed``) of each larger tensor; ``names`` restricts the tensors checked.
    Use float64 arrays: in float32 the differences drown in rounding.
    """
    rng = np.random.default_rng(seed)
    report = GradcheckReport()
    for name in names if names is not None else params:
        p = params[name]
        if p.dtype != np.float64:
            raise ValueError(f"gradcheck needs float64 tensors, {name} is {p.dtype}")
        flat = p.reshape(-1)  # a view: writing to it changes the parameter
        if not np.shares_memory(flat, p):
            raise ValueError(f"{name}: cannot perturb a non-contiguous array in place")
        chosen = _entries(p.shape, max_entries, rng)
        numeric = numeric_gradient(loss_fn, p, h, chosen)
        a = np.asarray(analytic[name], dtype=np.float64).reshape(-1)[chosen]
        report.rows.append(GradcheckRow(name, tuple(p.shape), int(chosen.size),
                                        float(np.max(np.abs(a - numeric))) if chosen.size else 0.0,
                                        relative_error(a, numeric)))
    return report


def check_op(forward, backward, inputs: dict, seed=0, h=1e-5, max_entries=None) -> GradcheckReport:
    """Gradient check of one op.

    ``forward(**inputs)`` returns an array ``out``; ``backward(dout)`` returns a dict of gradients by
    input name. The scalar checked is L = sum(out * R) with a fixed random R, so dL/dout = R: every
    output entry contributes, with a different weight, and no symmetry can hide an error.
    """
    rng = np.random.default_rng(seed)
    out = forward(**inputs)
    R = rng.standard_normal(out.shape)
    analytic = backward(R)
    return gradcheck(lambda: float(np.sum(forward(**inputs) * R)), inputs, analytic, h=h,
                     max_entries=max_entries, seed=seed, names=list(analytic))


def check_model(model, idx, targets, dropout_seed=None, max_entries=None, seed=0, h=1e-5) -> GradcheckReport:
    """Gradient check of every parameter of ``model`` (a float64 :class:`cllm.Model`) on one batch.

    With ``dropout_seed`` the dropout masks are drawn from a generator re-seeded for every forward
    pass, so the loss is one fixed function of the parameters.
    """
    def run():
        rng = None if dropout_seed is None else np.random.default_rng(dropout_seed)
        return model.forward(idx, targets, train=dropout_seed is not None, rng=rng)

    _, _, acts = run()
    grads = model.backward(acts)
    return gradcheck(lambda: run()[1], model.params, grads, h=h, max_entries=max_entries, seed=seed)


def perturb(params: dict, scale: float = 0.1, rng=0) -> dict:
    """Move every parameter off its initial value, in place, by N(0, scale^2) noise; returns ``params``.

    A fresh model has zero biases and unit LayerNorm gains, and a gradient check at such values can
    pass while a term of the backward pass is wrong (a bug multiplied by 0, or hidden behind a 1). Every
    whole-model gradient check perturbs first. ``rng``: a ``np.random.Generator`` or a seed.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    for v in params.values():
        v += rng.normal(0.0, scale, v.shape).astype(v.dtype, copy=False)
    return params


class _CallableModule(types.ModuleType):
    """``cllm.gradcheck`` is this module, whichever way it was reached (``import cllm.gradcheck``,
    ``from cllm.gradcheck import check_op`` or ``cllm.gradcheck`` itself); calling it calls
    :func:`gradcheck`."""

    def __call__(self, *args, **kwargs) -> GradcheckReport:
        return gradcheck(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
