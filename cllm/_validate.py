"""The argument checks every module shares: whole numbers, finite numbers and integer arrays.

Each raises ``ValueError`` with one line that starts with the argument's name, so a mistake is
reported where it was made. Booleans are refused where numbers are expected (``True`` is an int in
Python, but never a meant batch size), and NaN and infinities are refused as numbers.
"""
from __future__ import annotations

import math
from numbers import Integral

import numpy as np


def is_int(value) -> bool:
    """True for Python and numpy integers, False for bools and everything else."""
    return isinstance(value, (Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name, value, lo=None, hi=None) -> int:
    """``int(value)`` if it is an integer (Python or numpy, not bool) with ``lo <= value <= hi``;
    otherwise ValueError naming ``name``. The one check for "a whole number"."""
    if not is_int(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        if hi is not None:
            what = f"an integer in [{'-inf' if lo is None else lo}, {hi}]"
        else:
            what = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
                lo, f"an integer >= {lo}")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_number(name, value, lo=None, hi=None, lo_open=False, hi_open=False) -> float:
    """``float(value)`` if it is a finite real number (not bool) within the bounds; else ValueError.

    The one check for "a finite number": NaN and infinities are refused everywhere (an infinite
    learning rate or regulariser is never meant)."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {value!r}")
    return float(value)


def check_int_array(name, values, lo=None) -> np.ndarray:
    """``values`` as an int64 array, or ValueError naming ``name``.

    Accepts integer arrays, lists of ints, and float arrays whose entries are all integral; with
    ``lo``, every entry must be ``>= lo``.
    """
    arr = np.asarray(values)
    if arr.dtype == bool:
        raise ValueError(f"{name} must hold integers, got booleans")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integers, got non-integral values")
        if arr.size and np.max(np.abs(arr)) >= 2.0**63:
            raise ValueError(f"{name} entries must fit in int64")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "O":
        if not all(is_int(v) for v in arr.ravel()):
            raise ValueError(f"{name} must hold integers")
        try:
            arr = arr.astype(np.int64)
        except OverflowError:
            raise ValueError(f"{name} entries must fit in int64") from None
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() >= 2**63:
        raise ValueError(f"{name} entries must fit in int64")
    arr = arr.astype(np.int64, copy=False)
    if lo is not None and arr.size and arr.min() < lo:
        raise ValueError(f"{name} entries must be >= {lo}, got {int(arr.min())}")
    return arr
