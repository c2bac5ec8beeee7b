import dataclasses

import numpy as np
import pytest

import cllm
from cllm.config import PRESETS
from cllm.gradcheck import perturb


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def tiny_config(**overrides):
    """The model the whole-model gradient checks use: 2 layers, 2 heads, d_model 16, seq 8."""
    return dataclasses.replace(PRESETS["tiny"].model, **overrides)


def perturbed_model(cfg, seed=0, scale=0.1):
    """A model whose parameters are moved off their init (no zero biases, no unit gains), so that no
    parameter's gradient can be hidden behind a trivial value."""
    model = cllm.Model(cfg, seed=seed)
    perturb(model.params, scale, seed + 100)
    return model
