"""Tests for cllm.lattice.cache: lazy structured cache, finite fields, memoisation, sizes."""
import os
import subprocess
import sys

import numpy as np
import pytest

from cllm.lattice import cache as K
from cllm.lattice.coords import ulam_xy
from cllm.lattice.primes import first_primes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_construction_is_lazy_and_size_known():
    c = K.LatticeCache(23094)
    assert not c.built and len(c) == 23094
    assert c.bytes_per_entry == c.dtype.itemsize == 62 + 8 * K.DEFAULT_FEATURE_DIM
    assert c.nbytes == 23094 * c.bytes_per_entry
    rep = c.memory_report()
    assert rep["original_nbytes"] == 23094 * 64 == 1478016
    assert rep["ratio"] == pytest.approx(c.bytes_per_entry / 64)
    assert not c.built                                     # reporting sizes builds nothing
    rec = c.records
    assert c.built and rec.nbytes == c.nbytes and rec.shape == (23094,)
    assert c.records is rec                                # memoised


@pytest.mark.parametrize("n", [23094, 30000])
def test_every_field_finite_and_consistent(n):
    rec = K.LatticeCache(n).records
    for name in rec.dtype.names:
        assert np.all(np.isfinite(rec[name])), name
    p = first_primes(n)
    assert np.array_equal(rec["value"], p)
    assert np.array_equal(rec["index"], np.arange(n))
    assert np.array_equal(rec["clock_ring"], np.arange(n) // 12)
    assert set(np.unique(rec["mod12"][2:]).tolist()) == {1, 5, 7, 11}
    assert np.allclose(3.0 ** rec["log3_p"], p, rtol=1e-12)   # log domain, exact round trip
    assert np.array_equal(np.stack([rec["ulam_x"], rec["ulam_y"]], 1), ulam_xy(p))
    assert np.allclose(np.hypot(rec["vogel_x"], rec["vogel_y"]), np.sqrt(p))
    assert rec["features"].shape == (n, K.DEFAULT_FEATURE_DIM)
    assert not rec.flags.writeable


def test_get_cache_reuses_big_enough_cache():
    K.clear_caches()
    a = K.get_cache(1000)
    assert K.get_cache(500) is a and K.get_cache(1000) is a
    b = K.get_cache(2000)
    assert b is not a and len(b) == 2000
    assert K.get_cache(10) is b
    assert K.get_cache(10, feature_dim=4) is not b
    assert np.array_equal(b.records[:1000]["value"], a.records["value"])
    K.clear_caches()


def test_bad_sizes():
    with pytest.raises(ValueError, match="^n_primes "):
        K.LatticeCache(0)
    with pytest.raises(ValueError, match="^feature_dim "):
        K.LatticeCache(10, feature_dim=0)


def test_import_does_no_lattice_work():
    code = (
        "import sys, cllm, cllm.lattice\n"
        "assert not [m for m in sys.modules if m.startswith('cllm.lattice.')], sys.modules.keys()\n"
        "from cllm.lattice import LatticeCache, primes\n"
        "assert primes._sieved_limit == 0\n"
        "c = LatticeCache(5000)\n"
        "assert not c.built and primes._sieved_limit == 0\n"
        "import threading; assert threading.active_count() == 1\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
