"""The statistics the experiments report: mean and spread over seeds, and paired comparisons.

Every experiment runs each variant with several seeds, the same seeds for every variant, so that a
variant can be compared with the baseline seed by seed (a paired difference), which removes the
seed-to-seed spread the variants share.
"""
from __future__ import annotations

import math

import numpy as np


def mean_std(values) -> tuple:
    """(mean, sample standard deviation with ddof=1) of ``values``; std 0 for one value, nan for none."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt_mean_std(ms, digits=3) -> str:
    """``"2.094 ± 0.020"`` for (mean, std), ``"n/a"`` when the mean is nan."""
    m, s = ms[0], ms[1]
    return "n/a" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def compare(delta: tuple) -> str:
    """'better' / 'worse' when a paired difference (mean, std, n) of a loss is more than 2 standard
    errors from 0, otherwise 'not measurably different'."""
    mean, std, n = delta
    if n < 2 or math.isnan(mean):
        return "not compared (fewer than 2 seeds)"
    se = std / math.sqrt(n)
    return "better" if mean < -2 * se else "worse" if mean > 2 * se else "not measurably different"
