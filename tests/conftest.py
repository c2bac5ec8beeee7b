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


# -- the command line: one runner and one check of "a user mistake is one line, exit 2" ------------------

TINY_ARGS = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--seq-len", "16",
             "--batch-size", "4", "--eval-interval", "3", "--no-progress"]


def run_cli(capsys, argv):
    """``python -m cllm ARGV`` in this process -> (exit status, stdout, stderr)."""
    from cllm.__main__ import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, argv, needle):
    """The command fails as a user mistake should: exit 2, one line on stderr naming ``needle``,
    no traceback. Returns the line."""
    code, out, err = run_cli(capsys, argv)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cllm: error:"), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err + out
    return lines[0]


@pytest.fixture
def text_file(tmp_path):
    """A small English text file for command-line runs."""
    path = tmp_path / "tiny.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    return path

