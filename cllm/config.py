"""Configuration dataclasses, validated on construction.

Every invalid value raises ``ValueError`` with a message naming the field and what is allowed, so a
mistake is reported where it is made rather than as a shape error deep inside a matmul.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional

from ._validate import check_int, check_number, is_int
from .ops.activation import MLP_ACTIVATIONS

DTYPES = ("float32", "float64")
ACTIVATIONS = tuple(MLP_ACTIVATIONS)  # the MLP activation functions that cllm.ops implements
INITS = ("gpt2", "xavier", "he")
EMBEDDINGS = ("learned", "lattice")
ATTENTION_BIASES = ("none", "lattice")
OPTIMIZERS = ("adamw", "sgd", "momentum")


def _positive_int(obj, name):
    check_int(name, getattr(obj, name), 1)


def _choice(obj, name, allowed):
    value = getattr(obj, name)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _number(obj, name, lo=None, hi=None, lo_open=False, hi_open=False):
    check_number(name, getattr(obj, name), lo, hi, lo_open, hi_open)


class _Serializable:
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class ModelConfig(_Serializable):
    """Sizes and options of the GPT-style model.

    vocab_size V, d_model C, n_layers L, n_heads H, d_ff (MLP width), max_seq_len (longest context).
    """

    vocab_size: int = 65
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    max_seq_len: int = 64
    dtype: str = "float32"
    activation: str = "gelu"
    tie_weights: bool = True
    dropout: float = 0.0
    init: str = "gpt2"
    embedding: str = "learned"
    attention_bias: str = "none"
    lattice_features: int = 32  # k, columns of the fixed prime feature map (embedding="lattice")
    lattice_codes: Optional[tuple] = None  # token id -> positive integer code; None: token i -> (i+1)-th prime
    lattice_reg: float = 0.0  # lambda of the GCD-similarity regulariser on the embeddings (0: off)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len", "lattice_features"):
            _positive_int(self, name)
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model must be divisible by n_heads, got d_model={self.d_model}, n_heads={self.n_heads}"
            )
        _choice(self, "dtype", DTYPES)
        _choice(self, "activation", ACTIVATIONS)
        _choice(self, "init", INITS)
        _choice(self, "embedding", EMBEDDINGS)
        _choice(self, "attention_bias", ATTENTION_BIASES)
        if not isinstance(self.tie_weights, bool):
            raise ValueError(f"tie_weights must be True or False, got {self.tie_weights!r}")
        _number(self, "dropout", 0.0, 1.0, hi_open=True)
        _number(self, "lattice_reg", 0.0)
        if self.lattice_codes is not None:
            codes = tuple(self.lattice_codes)
            if len(codes) != self.vocab_size or not all(is_int(c) and c >= 2 for c in codes):
                raise ValueError(f"lattice_codes must hold one integer >= 2 per token ({self.vocab_size}), "
                                 f"got {len(codes)} entries")
            if len(set(codes)) != len(codes):
                raise ValueError("lattice_codes must be distinct: two tokens share a code")
            object.__setattr__(self, "lattice_codes", codes)  # JSON gives a list; keep it hashable

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class TrainConfig(_Serializable):
    """Optimisation settings. Defaults are the small configuration (nanoGPT's CPU "baby GPT")."""

    batch_size: int = 12
    seq_len: int = 64
    steps: int = 2000
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    lr_decay_steps: int = 2000
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 switches clipping off
    grad_accum: int = 1
    eval_interval: int = 250
    eval_max_batches: Optional[int] = None  # None: the full validation split
    log_interval: int = 10
    checkpoint_interval: int = 500
    seed: int = 1337
    # threads that each run forward and backward on a share of the batch (cllm/parallel.py);
    # None: automatic (one per 256 tokens of the batch, at most one per core), 1: the plain serial step
    workers: Optional[int] = None

    def __post_init__(self):
        if self.workers is not None:
            _positive_int(self, "workers")
        for name in ("batch_size", "seq_len", "steps", "lr_decay_steps", "grad_accum", "eval_interval",
                     "log_interval", "checkpoint_interval"):
            _positive_int(self, name)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_int("seed", self.seed, 0)
        _choice(self, "optimizer", OPTIMIZERS)
        _number(self, "lr", 0.0, lo_open=True)
        _number(self, "min_lr", 0.0)
        if self.min_lr > self.lr:  # the schedule decays from lr down to min_lr, never up
            raise ValueError(f"min_lr ({self.min_lr!r}) must not exceed lr ({self.lr!r})")
        _number(self, "beta1", 0.0, 1.0, hi_open=True)
        _number(self, "beta2", 0.0, 1.0, hi_open=True)
        _number(self, "eps", 0.0, lo_open=True)
        _number(self, "momentum", 0.0, 1.0, hi_open=True)
        _number(self, "weight_decay", 0.0)
        _number(self, "grad_clip", 0.0)
        if self.eval_max_batches is not None:
            _positive_int(self, "eval_max_batches")


@dataclass(frozen=True)
class Preset:
    """A named model size with the batch size it is measured at (``PRESETS``)."""

    model: ModelConfig
    batch_size: int

    @property
    def seq_len(self) -> int:
        return self.model.max_seq_len


PRESETS = {
    # the whole-model gradient checks: small enough for finite differences of every entry (float64)
    "tiny": Preset(ModelConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=8,
                               dtype="float64"), 3),
    # nanoGPT's CPU "baby GPT" on characters (the main job trains it at the corpus's vocabulary size)
    "small": Preset(ModelConfig(vocab_size=65, d_model=128, n_layers=4, n_heads=4, d_ff=512, max_seq_len=64), 12),
    # the earlier C project's model (tied head: 19,244,544 parameters)
    "seed": Preset(ModelConfig(vocab_size=611, d_model=512, n_layers=6, n_heads=8, d_ff=2048, max_seq_len=32), 4),
}
