import numpy as np
import pytest

import cllm


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def tiny_config(**overrides):
    """The model the whole-model gradient checks use: 2 layers, 2 heads, d_model 16, seq 8."""
    base = dict(vocab_size=11, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=8, dtype="float64")
    base.update(overrides)
    return cllm.ModelConfig(**base)


def perturbed_model(cfg, seed=0, scale=0.1):
    """A model whose parameters are moved off their init (no zero biases, no unit gains), so that no
    parameter's gradient can be hidden behind a trivial value."""
    model = cllm.Model(cfg, seed=seed)
    r = np.random.default_rng(seed + 100)
    for v in model.params.values():
        v += r.normal(0.0, scale, v.shape).astype(v.dtype)
    return model
