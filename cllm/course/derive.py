"""Derive it yourself: the learner writes a backward pass in a marked function, and :func:`check`
compares it with centred finite differences and with the library's own op.

Three exercises, one per chapter of the backward pass::

    name            the learner writes                                  returns
    cross_entropy   backward(logits, targets)                           dlogits          (B, T, V)
    softmax         backward(dprobs, probs)                             dscores          (B, H, T, T)
    layernorm       backward(dout, x, w, mean, rstd)                    (dx, dw, db)     (B, T, C), (C,), (C,)

``cross_entropy``: the gradient of the MEAN loss over the B*T positions with respect to the logits.
``softmax``: the softmax inside causal attention, probs = softmax(scores) over the last axis, with
the entries above the diagonal masked (probability exactly 0): given dL/dprobs, return dL/dscores.
``layernorm``: out = (x - mean) * rstd * w + b over the last axis; given dL/dout, return the three
gradients.

Each check runs the learner's function on a small seeded float64 problem (inputs away from the easy
values: LayerNorm's w and b are not 1 and 0), and reports, per returned tensor, the relative error
against finite differences of the forward pass (the independent reference) and against the library's
backward. A wrong tensor is named with both errors, the largest difference and where it is; a result
that is the reference times one constant (a forgotten 1/N, a flipped sign) is called out as such. A
function that still raises NotImplementedError is "not filled in yet", which is not an error: the
course notebooks keep the stub, and their solutions notebooks run the reference fill-in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..gradcheck import HEALTHY, numeric_gradient, relative_error
from ..ops.attention import causal_mask
from ..ops.cross_entropy import cross_entropy_backward, cross_entropy_forward
from ..ops.layernorm import layernorm_backward, layernorm_forward
from ..ops.softmax import softmax_backward, softmax_forward


@dataclass
class TensorResult:
    name: str
    shape: tuple
    vs_numeric: float     # relative error against centred finite differences
    vs_library: float     # relative error against the library's backward
    max_abs_diff: float   # max |yours - library|
    where: tuple          # index of that largest difference
    scale: Optional[float] = None  # yours = scale * library everywhere (when it is, and scale != 1)

    @property
    def ok(self) -> bool:
        return self.vs_numeric < HEALTHY and self.vs_library < HEALTHY


@dataclass
class DeriveReport:
    """What :func:`check` found. ``ok`` is True only when every tensor matches both references."""

    exercise: str
    status: str                      # "checked", "not filled in", "raised", "wrong output"
    message: str = ""
    tensors: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "checked" and all(t.ok for t in self.tensors)

    def wrong(self) -> list:
        """Names of the tensors that do not match."""
        return [t.name for t in self.tensors if not t.ok]

    def __str__(self) -> str:
        head = f"{self.exercise} backward"
        if self.status != "checked":
            return f"{head}: {self.message}"
        width = max(len("tensor"), *(len(t.name) for t in self.tensors))
        lines = [f"{head}: " + ("correct: every tensor matches finite differences and the library"
                                if self.ok else "wrong: " + ", ".join(self.wrong())),
                 f"  {'tensor':<{width}}  {'shape':<14} {'vs numeric':>10}  {'vs library':>10}  verdict"]
        for t in self.tensors:
            lines.append(f"  {t.name:<{width}}  {str(t.shape):<14} {t.vs_numeric:>10.1e}  {t.vs_library:>10.1e}  "
                         + ("ok" if t.ok else "WRONG"))
        for t in self.tensors:
            if t.ok:
                continue
            if t.scale is not None:
                lines.append(f"  {t.name}: yours is {t.scale:.4g} times the right answer everywhere"
                             + (" (the sign is flipped)" if t.scale < 0 else ""))
            else:
                lines.append(f"  {t.name}: largest difference {t.max_abs_diff:.3g} at index {t.where}")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython shows the table, not the dataclass
        p.text(str(self))


@dataclass
class _Exercise:
    signature: str
    outputs: tuple                       # names of the returned tensors, in order
    make: Callable                       # rng -> problem dict
    call: Callable                       # (learner fn, problem) -> result
    library: Callable                    # problem -> tuple of reference arrays
    numeric: Callable                    # problem -> tuple of finite-difference arrays


# ------------------------------------------------------------------------------------- cross-entropy
def _ce_make(rng):
    B, T, V = 2, 3, 7
    return {"logits": rng.normal(0.0, 2.0, (B, T, V)), "targets": rng.integers(0, V, (B, T))}


def _ce_library(p):
    _, probs = cross_entropy_forward(p["logits"], p["targets"])
    return (cross_entropy_backward(probs, p["targets"]),)


def _ce_numeric(p):
    logits = p["logits"].copy()
    num = _numeric(lambda: cross_entropy_forward(logits, p["targets"])[0], {"logits": logits})
    return (num["logits"],)


# ------------------------------------------------------------------------------- masked softmax
def _sm_make(rng):
    B, H, T = 1, 2, 5
    scores = rng.normal(0.0, 1.5, (B, H, T, T)) + causal_mask(T)  # (B, H, T, T), -inf above the diagonal
    probs = softmax_forward(scores)
    return {"scores": scores, "probs": probs, "dprobs": rng.standard_normal(probs.shape)}


def _sm_library(p):
    return (softmax_backward(p["dprobs"], p["probs"]),)


def _sm_numeric(p):
    scores = p["scores"].copy()  # -inf +- h stays -inf: those entries get a numeric gradient of 0
    num = _numeric(lambda: float(np.sum(softmax_forward(scores) * p["dprobs"])), {"scores": scores})
    return (num["scores"],)


# ------------------------------------------------------------------------------------- LayerNorm
def _ln_make(rng):
    B, T, C = 2, 3, 6
    x = rng.normal(0.5, 2.0, (B, T, C))
    w = rng.normal(1.0, 0.5, C)
    b = rng.normal(0.0, 0.5, C)
    _, mean, rstd = layernorm_forward(x, w, b)
    return {"x": x, "w": w, "b": b, "mean": mean, "rstd": rstd, "dout": rng.standard_normal(x.shape)}


def _ln_library(p):
    return layernorm_backward(p["dout"], p["x"], p["w"], p["mean"], p["rstd"])


def _ln_numeric(p):
    arrays = {k: p[k].copy() for k in ("x", "w", "b")}
    num = _numeric(lambda: float(np.sum(layernorm_forward(arrays["x"], arrays["w"], arrays["b"])[0] * p["dout"])),
                   arrays)
    return num["x"], num["w"], num["b"]


def _numeric(loss_fn, arrays: dict) -> dict:
    """Finite differences of ``loss_fn`` for every entry of every array (float64, nudged in place)."""
    return {name: numeric_gradient(loss_fn, a) for name, a in arrays.items()}


EXERCISES = {
    "cross_entropy": _Exercise("backward(logits, targets) -> dlogits", ("dlogits",), _ce_make,
                               lambda fn, p: fn(p["logits"].copy(), p["targets"].copy()), _ce_library, _ce_numeric),
    "softmax": _Exercise("backward(dprobs, probs) -> dscores", ("dscores",), _sm_make,
                         lambda fn, p: fn(p["dprobs"].copy(), p["probs"].copy()), _sm_library, _sm_numeric),
    "layernorm": _Exercise("backward(dout, x, w, mean, rstd) -> (dx, dw, db)", ("dx", "dw", "db"), _ln_make,
                           lambda fn, p: fn(p["dout"].copy(), p["x"].copy(), p["w"].copy(), p["mean"].copy(),
                                            p["rstd"].copy()), _ln_library, _ln_numeric),
}


def signature(exercise: str) -> str:
    """The function the learner writes for ``exercise``."""
    return EXERCISES[_known(exercise)].signature


def _known(exercise) -> str:
    if exercise not in EXERCISES:
        raise ValueError(f"unknown exercise {exercise!r}; choose one of {', '.join(EXERCISES)}")
    return exercise


def _scale(yours, ref) -> Optional[float]:
    """c when yours == c * ref everywhere (to 1e-9 relative) for a constant c != 1, else None."""
    denom = float(np.sum(ref * ref))
    if denom == 0.0:
        return None
    c = float(np.sum(yours * ref) / denom)
    if abs(c - 1.0) < 1e-6 or c == 0.0:
        return None
    return c if relative_error(yours, c * ref) < 1e-9 else None


def check(exercise: str, fn: Callable, seed: int = 0) -> DeriveReport:
    """Run the learner's ``fn`` on exercise ``exercise``'s problem and compare it with both references.

    Never raises for a mistake in ``fn``: the report says what went wrong (``print`` it).
    """
    ex = EXERCISES[_known(exercise)]
    problem = ex.make(np.random.default_rng(seed))
    try:
        with np.errstate(all="ignore"):
            got = ex.call(fn, problem)
    except NotImplementedError:
        return DeriveReport(exercise, "not filled in",
                            "not filled in yet: write the body of your function, then run this cell again")
    except Exception as exc:  # the learner's code failed: say how, in one line
        return DeriveReport(exercise, "raised", f"your function raised {type(exc).__name__}: {exc}")
    if len(ex.outputs) > 1:
        if not isinstance(got, (tuple, list)) or len(got) != len(ex.outputs):
            return DeriveReport(exercise, "wrong output",
                                f"return {len(ex.outputs)} arrays ({', '.join(ex.outputs)}), got {type(got).__name__}")
    else:
        got = (got,)
    library, numeric = ex.library(problem), ex.numeric(problem)
    report = DeriveReport(exercise, "checked")
    for name, g, ref, num in zip(ex.outputs, got, library, numeric):
        if g is None:
            return DeriveReport(exercise, "wrong output", f"{name} is None: return an array")
        g = np.asarray(g, dtype=np.float64)
        if g.shape != ref.shape:
            return DeriveReport(exercise, "wrong output", f"{name} has shape {g.shape}, it should be {ref.shape}")
        if not np.all(np.isfinite(g)):
            return DeriveReport(exercise, "wrong output",
                                f"{name} holds {int(np.sum(~np.isfinite(g)))} non-finite entries (NaN or inf)")
        diff = np.abs(g - ref)
        where = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
        report.tensors.append(TensorResult(name, tuple(g.shape), relative_error(g, num), relative_error(g, ref),
                                           float(diff.max()), where, _scale(g, ref)))
    return report
