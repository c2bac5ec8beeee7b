"""The crystalline lattice, made mathematically sound: primes, spiral and clock coordinates, a lattice
cache, GCD similarity on composite codes, exact LLL reduction, and a fixed prime feature map.

Importing this package does no lattice work: no sieve, no cache, no threads, and the submodules
themselves load on first use of a name. Everything is computed on demand and memoised.

Submodules: ``primes`` (sieve, n-th prime, clock wheel, the seed's broken generator), ``coords`` (Ulam,
Vogel, clock, log features), ``cache`` (``LatticeCache``), ``similarity`` (GCD similarity, Gaussian
kernel), ``codes`` (composite word codes), ``lll`` (LLL, integer relations), ``features`` (the feature
map ``F``, token primes and angles).
"""
from importlib import import_module

# public name -> submodule that defines it
_EXPORTS = {
    # primes
    "primes_below": "primes",
    "first_primes": "primes",
    "nth_prime": "primes",
    "prime_upper_bound": "primes",
    "prime_index": "primes",
    "is_prime": "primes",
    "clock_residues": "primes",
    "clock_wheel_counts": "primes",
    "geometric_filter_pitfall": "primes",
    "pitfall_report": "primes",
    # coordinates
    "ulam_coords": "coords",
    "ulam_xy": "coords",
    "ulam_ring": "coords",
    "vogel_coords": "coords",
    "vogel_xy": "coords",
    "vogel_angle": "coords",
    "clock_angle": "coords",
    "clock_features": "coords",
    "log_prime_features": "coords",
    # cache
    "LatticeCache": "cache",
    "get_cache": "cache",
    "clear_caches": "cache",
    # similarity
    "gcd_similarity": "similarity",
    "gcd_similarity_matrix": "similarity",
    "geometric_kernel": "similarity",
    "geometric_kernel_matrix": "similarity",
    # composite codes
    "composite_codes": "codes",
    "build_codebook": "codes",
    "Codebook": "codes",
    "split_word": "codes",
    "split_code": "codes",
    # LLL
    "lll_reduce": "lll",
    "gram_schmidt": "lll",
    "is_lll_reduced": "lll",
    "integer_relation": "lll",
    # features
    "prime_features": "features",
    "token_primes": "features",
    "token_features": "features",
    "token_angles": "features",
    "angle_bias": "features",
    "fourier_features": "features",
    "fourier_frequencies": "features",
    "crt_clock_features": "features",
    "prime_power_factors": "features",
    "random_features": "features",
}

_SUBMODULES = ("primes", "coords", "cache", "similarity", "codes", "lll", "features")

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    """Load the submodule that defines ``name`` on first use, then cache the attribute here."""
    if name in _SUBMODULES:
        return import_module(f"{__name__}.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    """List the public names (and submodules) without importing anything."""
    return sorted(set(__all__) | set(_SUBMODULES))
