"""Out to the PyTorch world and back: Hugging Face GPT-2 export and import, in numpy.

    export_run("runs/x", "export/x")                 # python -m cllm export runs/x --format hf --out export/x
    model, tok = load_pretrained("gpt2-files/")       # cllm.load_pretrained: config.json + model.safetensors + tokenizer
    import_run("gpt2-files/", "runs/gpt2")            # python -m cllm import gpt2-files/ --out runs/gpt2

cllm's parameters already follow GPT-2's layout, so a GPT-2 checkpoint is a renaming:

    cllm                      GPT2LMHeadModel (save_pretrained)      the Hub's original gpt2 file
    wte                       transformer.wte.weight  (V, C)         wte.weight
    wpe                       transformer.wpe.weight  (T, C)         wpe.weight
    h.l.attn.c_attn.weight    transformer.h.l.attn.c_attn.weight     h.l.attn.c_attn.weight  (C, 3C)
    ...                       ...                                    + h.l.attn.bias, h.l.attn.masked_bias (buffers)
    ln_f.weight               transformer.ln_f.weight                ln_f.weight
    lm_head.weight            lm_head.weight (untied heads only)     (absent: tied)

GPT-2's ``Conv1D`` stores its weight as (in, out), as cllm does, so nothing is transposed (an
``nn.Linear`` would be (out, in)); the untied ``lm_head`` is an ``nn.Linear`` of shape (V, C), which is
also how cllm stores it. A tied head is absent from the file, as ``save_pretrained`` writes it.

Reading: the safetensors header (8-byte little-endian length, then JSON) is read and checked here
first: names, dtypes, shapes against config.json, and that every tensor's byte range fits the file
exactly. The memory the model needs is estimated before anything is allocated. No pickle is ever
read: ``pytorch_model.bin`` is refused. Tensors are then read with numpy (F32, F64, F16 and BF16).

Writing: with ``safetensors.numpy`` (the optional ``safetensors`` package; torch is not needed), into
a temporary folder that is renamed into place, so an export is complete or absent.

The real GPT-2 (124M): fetch four files of openai-community/gpt2 into one folder, e.g.

    hf download openai-community/gpt2 config.json model.safetensors vocab.json merges.txt --local-dir gpt2
    # or: for f in config.json model.safetensors vocab.json merges.txt; do
    #       curl -LO https://huggingface.co/openai-community/gpt2/resolve/main/$f; done

then ``model, tok = cllm.load_pretrained("gpt2")`` and ``cllm.generate.generate(model, tok.encode(...), n)``
run it in numpy (the bare-name Hub file, float32, about 0.5 GB; the tokenizer through cllm's BPE).

Tokenizers: a character or word tokenizer becomes a ``tokenizer.json`` in the Hugging Face
``tokenizers`` format (a WordLevel model over cllm's vocabulary with a Split pre-tokenizer that cuts
the text as cllm does, and a Fuse decoder); a byte-level BPE tokenizer becomes GPT-2's
``vocab.json`` + ``merges.txt``. ``AutoTokenizer.from_pretrained`` reads either with cllm's ids.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from ._validate import is_int
from .config import ModelConfig, TrainConfig
from .ops.layernorm import LN_EPS


class InteropError(ValueError):
    """A file or folder that cannot be exported or imported; the message is one line naming it."""


# ---------------------------------------------------------------------------------------------------
# the facts shared by both directions

# cllm activation -> GPT-2 config's activation_function (GELU, tanh approximation, is "gelu_new")
HF_ACTIVATION = {"gelu": "gelu_new", "tanh": "tanh"}
# GPT-2 activation_function -> cllm; gelu_pytorch_tanh is the same formula as gelu_new
CLLM_ACTIVATION = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "tanh": "tanh"}

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
VOCAB_JSON = "vocab.json"
MERGES_TXT = "merges.txt"
PICKLES = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
ENDOFTEXT = "<|endoftext|>"

# safetensors dtype -> (bytes per element, numpy dtype to read it as; None: not a parameter dtype)
_ST_DTYPES = {
    "F64": (8, "<f8"), "F32": (4, "<f4"), "F16": (2, "<f2"), "BF16": (2, None),
    "I64": (8, None), "I32": (4, None), "I16": (2, None), "I8": (1, None),
    "U64": (8, None), "U32": (4, None), "U16": (2, None), "U8": (1, None), "BOOL": (1, None),
    "F8_E4M3": (1, None), "F8_E5M2": (1, None),
}
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_BUFFER = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$")  # the Hub file's causal-mask buffers
_MAX_HEADER = 100_000_000  # the safetensors format's own limit on the JSON header


def hf_name(name: str) -> str:
    """cllm parameter name -> the name ``save_pretrained`` gives it in GPT2LMHeadModel."""
    if name == "lm_head.weight":
        return name
    if name in ("wte", "wpe"):
        return f"transformer.{name}.weight"
    return "transformer." + name


def _cllm_name(key: str) -> Optional[str]:
    """A GPT-2 tensor name in either naming form -> the cllm name (None: not a GPT-2 parameter name)."""
    if key == "lm_head.weight":
        return key
    if key.startswith("transformer."):
        key = key[len("transformer."):]
    if key in ("wte.weight", "wpe.weight"):
        return key[:3]
    if key.startswith(("h.", "ln_f.")):
        return key
    return None


def _safetensors_numpy():
    try:
        import safetensors.numpy as stn
    except ImportError:
        raise InteropError("writing model.safetensors needs the safetensors package: pip install safetensors") from None
    return stn


# ---------------------------------------------------------------------------------------------------
# tokenizers in the Hugging Face tokenizers format

CHAR_SPLIT = r"[\s\S]"  # every character on its own (\s\S: newlines too)


def _ranges(positions) -> list:
    out = []
    for p in positions:
        if out and out[-1][1] == p - 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return out


def _class(ranges) -> str:
    return "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)


@functools.lru_cache(maxsize=1)
def word_split_pattern() -> str:
    """cllm's word split (``tokenizer.WORD_PATTERN``) as an Oniguruma pattern for ``tokenizers``.

    ``\\w``, ``\\d`` and ``\\s`` mean different sets in Python's ``re`` and in Oniguruma (combining
    marks, other numbers, unassigned code points, U+001C-U+001F), so the pattern spells out the code
    point ranges that Python's own regex classifies as letter, digit and whitespace: the two engines
    then cut every text into the same pieces.
    """
    from .tokenizer import WORD_PATTERN

    word, digit, space = r"[^\W\d]", r"\d", r"\s"
    if WORD_PATTERN.pattern != rf"{word}+|{digit}+|{space}+|[^\w\s]":  # the form spelt out below
        raise AssertionError(f"cllm.tokenizer.WORD_PATTERN changed: {WORD_PATTERN.pattern}")
    text = "".join(map(chr, range(0x110000)))  # every code point once, position = code point
    sets = [_ranges(m.start() for m in re.finditer(p, text)) for p in (word, digit, space)]
    union = _ranges(sorted(m.start() for m in re.finditer("|".join((word, digit, space)), text)))
    return "|".join([f"[{_class(s)}]+" for s in sets] + [f"[^{_class(union)}]"])


def _hf_tokenizer_json(vocab: list, pattern: str, unk: str) -> dict:
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        "post_processor": None, "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(vocab)}, "unk_token": unk},
    }


def tokenizer_files(tok) -> dict:
    """File name -> bytes of the Hugging Face files for a cllm tokenizer (char and word here; BPE
    through :func:`_bpe_to_files`)."""
    kind = getattr(tok, "kind", None)
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    if kind == "char":
        # "<unk>" is not a character, so never in the vocabulary: an unknown character is an error, as in cllm
        tj = _hf_tokenizer_json(tok.chars, CHAR_SPLIT, "<unk>")
    elif kind == "word":
        tj = _hf_tokenizer_json(tok.vocab, word_split_pattern(), tok.vocab[0])
    elif kind == "bpe":
        return _bpe_to_files(tok)
    else:
        raise InteropError(f"cannot export a tokenizer of kind {kind!r} (char, word and bpe can be exported)")
    return {TOKENIZER_JSON: _json_bytes(tj), TOKENIZER_CONFIG: _json_bytes(cfg)}


def _bpe_from_files(vocab_json: Path, merges_txt: Path):
    """GPT-2's vocab.json + merges.txt -> cllm's byte-level BPE tokenizer."""
    from .tokenizer import BPETokenizer

    return BPETokenizer.from_gpt2_files(vocab_json, merges_txt)


def _bpe_to_files(tok) -> dict:
    """cllm's BPE tokenizer -> {"vocab.json", "merges.txt", "tokenizer_config.json": bytes}."""
    with tempfile.TemporaryDirectory() as d:
        tok.save_gpt2_files(d)
        files = {n: (Path(d) / n).read_bytes() for n in (VOCAB_JSON, MERGES_TXT)}
    vocab = json.loads(files[VOCAB_JSON].decode("utf-8"))
    cfg = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "clean_up_tokenization_spaces": False}
    if ENDOFTEXT in vocab:
        cfg.update(bos_token=ENDOFTEXT, eos_token=ENDOFTEXT, unk_token=ENDOFTEXT)
    files[TOKENIZER_CONFIG] = _json_bytes(cfg)
    return files


def special_ids(files: Mapping[str, bytes]) -> tuple:
    """(bos, eos) ids for config.json: GPT-2's <|endoftext|> when the vocabulary has it, else None."""
    if VOCAB_JSON in files:
        vocab = json.loads(files[VOCAB_JSON].decode("utf-8"))
        i = vocab.get(ENDOFTEXT)
        return (i, i) if isinstance(i, int) else (None, None)
    return None, None  # char and word vocabularies have no begin / end of text token


def tokenizer_from_hf_json(path: Path):
    """A tokenizer.json that :func:`tokenizer_files` wrote -> the cllm char or word tokenizer."""
    from .tokenizer import UNK, CharTokenizer, WordTokenizer

    try:
        tj = json.loads(Path(path).read_text(encoding="utf-8"))
        model, pre, dec = tj["model"], tj["pre_tokenizer"], tj["decoder"]
        ours = (model["type"] == "WordLevel" and pre["type"] == "Split" and dec["type"] == "Fuse"
                and not tj.get("added_tokens") and tj.get("normalizer") is None and tj.get("post_processor") is None)
        vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
        pattern = pre["pattern"]["Regex"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        ours = False
    if not ours or [i for _, i in vocab] != list(range(len(vocab))):
        raise InteropError(f"{path}: not a tokenizer.json that cllm wrote (a WordLevel vocabulary with a Split "
                           f"pre-tokenizer); give GPT-2's vocab.json and merges.txt instead")
    tokens = [t for t, _ in vocab]
    if pattern == CHAR_SPLIT:
        if tokens != sorted(tokens) or any(len(t) != 1 for t in tokens):
            raise InteropError(f"{path}: a character vocabulary must list single characters in code-point order")
        return CharTokenizer(tokens)
    if tokens and tokens[0] == UNK and model.get("unk_token") == UNK:
        return WordTokenizer(tokens)
    raise InteropError(f"{path}: not a tokenizer.json that cllm wrote (neither its character nor its word form)")


# ---------------------------------------------------------------------------------------------------
# config.json

def hf_config(cfg: ModelConfig, bos=None, eos=None) -> dict:
    """GPT-2's config.json for a cllm ModelConfig."""
    if cfg.attention_bias != "none":
        raise InteropError("a model with lattice attention bias (beta_h cos(phi_h (theta_i - theta_j)) added to "
                           "the scores) cannot be expressed as GPT-2, whose attention has no such term")
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.max_seq_len, "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.d_ff,
        "activation_function": HF_ACTIVATION[cfg.activation], "layer_norm_epsilon": LN_EPS,
        "tie_word_embeddings": cfg.tie_weights,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "add_cross_attention": False, "initializer_range": 0.02, "use_cache": True,
        "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": None,
        "dtype": cfg.dtype,  # transformers 5 reads "dtype"; transformers 4 read "torch_dtype"
        "torch_dtype": cfg.dtype,
    }


def _int_field(hf, key, path, default=None):
    value = hf.get(key, default)
    if not is_int(value) or value <= 0:
        raise InteropError(f"{path}: {key} must be a positive integer, got {value!r}")
    return value


def model_config_from_hf(hf: Mapping, path, dtype: str) -> ModelConfig:
    """ModelConfig for a GPT-2 config.json (dict); InteropError naming ``path`` for what cllm cannot run."""
    if not isinstance(hf, Mapping):
        raise InteropError(f"{path}: expected a JSON object")
    mt = hf.get("model_type")
    if mt != "gpt2":
        raise InteropError(f"{path}: model_type {mt!r} is not 'gpt2'; cllm imports GPT-2 checkpoints only")
    act = hf.get("activation_function", "gelu_new")
    if act not in CLLM_ACTIVATION:
        raise InteropError(f"{path}: activation_function {act!r} is not one cllm has "
                           f"(it has {', '.join(sorted(CLLM_ACTIVATION))})")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or not math.isclose(eps, LN_EPS, rel_tol=1e-9):
        raise InteropError(f"{path}: layer_norm_epsilon {eps!r}; cllm's LayerNorm uses {LN_EPS}")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
        if hf.get(key, want) is not want:
            raise InteropError(f"{path}: {key}={hf.get(key)!r} is not supported (cllm's attention needs {want})")
    C = _int_field(hf, "n_embd", path, 768)
    n_inner = hf.get("n_inner")
    d_ff = 4 * C if n_inner is None else _int_field(hf, "n_inner", path)
    tie = hf.get("tie_word_embeddings", True)
    if not isinstance(tie, bool):
        raise InteropError(f"{path}: tie_word_embeddings must be true or false, got {tie!r}")
    try:
        return ModelConfig(vocab_size=_int_field(hf, "vocab_size", path, 50257), d_model=C,
                           n_layers=_int_field(hf, "n_layer", path, 12), n_heads=_int_field(hf, "n_head", path, 12),
                           d_ff=d_ff, max_seq_len=_int_field(hf, "n_positions", path, 1024), dtype=dtype,
                           activation=CLLM_ACTIVATION[act], tie_weights=tie)
    except ValueError as exc:
        raise InteropError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------------------------
# memory

def check_memory(cfg: ModelConfig, path, optimizer_moments: int = 0) -> None:
    """InteropError (one line) when building ``cfg``'s model would need more memory than is available:
    the estimate comes from the config alone (:func:`cllm.activations.import_bytes`)."""
    from .activations import available_memory, import_bytes

    need, have = import_bytes(cfg, optimizer_moments), available_memory()
    if have is not None and need > have:
        raise InteropError(f"{path}: this model needs about {need / 2**30:,.1f} GiB of memory "
                           f"({cfg.n_layers} layers, d_model {cfg.d_model}, vocabulary {cfg.vocab_size}); "
                           f"this machine has {have / 2**30:,.1f} GiB available")


# ---------------------------------------------------------------------------------------------------
# safetensors, read here

def read_safetensors_header(path) -> tuple:
    """(tensors, metadata, data_start) of a safetensors file, checked against the file's size.

    ``tensors`` maps name -> (dtype, shape, begin, end), offsets relative to ``data_start``. Raises
    InteropError (one line) if the length prefix, the JSON, a dtype, a shape or a byte range is wrong:
    every tensor must take exactly prod(shape) x itemsize bytes, and together they must tile the data
    section without gaps or overlaps up to the end of the file.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InteropError(f"{path}: too short for a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise InteropError(f"{path}: the header claims {n} bytes, the file has {size - 8} after the length")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InteropError(f"{path}: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise InteropError(f"{path}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise InteropError(f"{path}: __metadata__ is not a JSON object")
    data_start, data_len = 8 + n, size - 8 - n
    tensors, spans = {}, []
    for name, e in header.items():
        try:
            dtype, shape, (begin, end) = e["dtype"], list(e["shape"]), e["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise InteropError(f"{path}: tensor {name!r} needs dtype, shape and data_offsets [begin, end]") from None
        if dtype not in _ST_DTYPES:
            raise InteropError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        ints = [begin, end] + shape
        if any(not is_int(v) or v < 0 for v in ints):
            raise InteropError(f"{path}: tensor {name!r} has a negative or non-integer shape or offset")
        nbytes = math.prod(shape) * _ST_DTYPES[dtype][0]
        if end - begin != nbytes:
            raise InteropError(f"{path}: tensor {name!r} claims bytes {begin}..{end} ({end - begin}), "
                               f"but {dtype} {tuple(shape)} takes {nbytes}")
        if end > data_len:
            raise InteropError(f"{path}: tensor {name!r} ends at byte {end} of a {data_len}-byte data section "
                               f"(file truncated or header lies about sizes)")
        tensors[name] = (dtype, tuple(shape), begin, end)
        spans.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise InteropError(f"{path}: tensor {name!r} starts at byte {begin}, expected {pos} "
                               f"({'overlap' if begin < pos else 'gap'} in the data section)")
        pos = end
    if pos != data_len:
        raise InteropError(f"{path}: the tensors end at byte {pos} of a {data_len}-byte data section")
    return tensors, metadata, data_start


def _read_tensor(f, data_start: int, entry: tuple, out_dtype) -> np.ndarray:
    """One tensor of a checked header, read with numpy and cast to ``out_dtype``."""
    dtype, shape, begin, end = entry
    f.seek(data_start + begin)
    count = math.prod(shape)
    if dtype == "BF16":  # bfloat16 is the top half of a float32
        raw = np.fromfile(f, dtype="<u2", count=count)
        arr = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        arr = np.fromfile(f, dtype=_ST_DTYPES[dtype][1], count=count)
    if arr.size != count:
        raise InteropError(f"{f.name}: truncated while reading a tensor")
    return arr.reshape(shape).astype(out_dtype, copy=False)


# ---------------------------------------------------------------------------------------------------
# import

def _check_dir(d: Path) -> None:
    if not d.exists():
        raise InteropError(f"{d}: no such directory")
    if d.is_file():
        if d.suffix in _PICKLE_SUFFIXES:
            raise InteropError(f"{d}: a pickle (torch.save) file; cllm never unpickles: convert it to "
                               f"model.safetensors first (e.g. save_pretrained(..., safe_serialization=True))")
        raise InteropError(f"{d}: expected a directory with config.json and model.safetensors, got a file")
    if not (d / CONFIG).is_file():
        raise InteropError(f"{d}: missing {CONFIG}")
    if not (d / WEIGHTS).is_file():
        pickles = [p for p in PICKLES if (d / p).exists()] + sorted(
            p.name for p in d.iterdir() if p.suffix in _PICKLE_SUFFIXES and p.name not in PICKLES)
        if pickles:
            raise InteropError(f"{d}: has {pickles[0]} but no {WEIGHTS}; cllm never unpickles: convert it to "
                               f"safetensors first (e.g. save_pretrained(..., safe_serialization=True))")
        if (d / (WEIGHTS + ".index.json")).exists():
            raise InteropError(f"{d}: a sharded checkpoint ({WEIGHTS}.index.json); cllm reads one {WEIGHTS}")
        raise InteropError(f"{d}: missing {WEIGHTS}")


def _read_config(d: Path) -> tuple:
    path = d / CONFIG
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InteropError(f"{path}: not valid JSON ({exc})") from None
    return hf, path


def _plan(d: Path, hf: Mapping, cfg: ModelConfig, tensors: Mapping) -> dict:
    """cllm name -> file tensor name, after checking names and shapes against the config."""
    from .model import param_shapes

    shapes = param_shapes(cfg)
    wpath = d / WEIGHTS
    plan = {}
    for key, (dtype, shape, _, _) in tensors.items():
        name = _cllm_name(key)
        if _BUFFER.match(key):
            continue  # causal-mask buffers of the original GPT-2 file
        if name == "lm_head.weight" and cfg.tie_weights:
            continue  # a tied head is the token embedding (transformers ignores a stored copy too)
        if name not in shapes:
            raise InteropError(f"{wpath}: unexpected tensor {key!r} (not a GPT-2 parameter of this config)")
        if name in plan:
            raise InteropError(f"{wpath}: {name!r} is stored twice ({plan[name]!r} and {key!r})")
        if shape != shapes[name]:
            raise InteropError(f"{wpath}: tensor {key!r} has shape {shape}, config.json implies {shapes[name]}")
        if dtype not in _FLOAT_DTYPES:
            raise InteropError(f"{wpath}: tensor {key!r} has dtype {dtype}; parameters are floating point")
        plan[name] = key
    missing = [n for n in shapes if n not in plan]
    if missing:
        hint = " (config.json says tie_word_embeddings false)" if missing == ["lm_head.weight"] else ""
        raise InteropError(f"{wpath}: missing tensor {hf_name(missing[0])!r}{hint}"
                           + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    return plan


def _load(d, dtype=None, optimizer_moments=0):
    import dataclasses

    if dtype is not None:
        try:
            dtype = str(np.dtype(dtype))
        except TypeError:
            dtype = repr(dtype)
        if dtype not in ("float32", "float64"):
            raise InteropError(f"dtype must be float32 or float64, got {dtype}")
    d = Path(d)
    _check_dir(d)
    hf, cpath = _read_config(d)
    cfg = model_config_from_hf(hf, cpath, dtype or "float32")
    check_memory(cfg, cpath, optimizer_moments)  # from the config alone, before the file is read
    wpath = d / WEIGHTS
    tensors, _, data_start = read_safetensors_header(wpath)
    plan = _plan(d, hf, cfg, tensors)
    if dtype is None and {tensors[k][0] for k in plan.values()} == {"F64"}:
        cfg = dataclasses.replace(cfg, dtype="float64")  # a float64 file stays float64
        check_memory(cfg, cpath, optimizer_moments)
    tok = _load_tokenizer(d, cfg)

    from .model import Model

    model = Model(cfg, seed=0)
    with open(wpath, "rb") as f:
        for name, key in plan.items():
            model.params[name][...] = _read_tensor(f, data_start, tensors[key], model.dtype)
    return model, tok


def _load_tokenizer(d: Path, cfg: ModelConfig):
    if (d / VOCAB_JSON).is_file() or (d / MERGES_TXT).is_file():
        for n in (VOCAB_JSON, MERGES_TXT):
            if not (d / n).is_file():
                raise InteropError(f"{d}: missing {n} (GPT-2's tokenizer is vocab.json + merges.txt)")
        tok = _bpe_from_files(d / VOCAB_JSON, d / MERGES_TXT)
    elif (d / TOKENIZER_JSON).is_file():
        tok = tokenizer_from_hf_json(d / TOKENIZER_JSON)
    else:
        raise InteropError(f"{d}: missing tokenizer files (vocab.json + merges.txt, or a tokenizer.json cllm wrote)")
    if tok.vocab_size > cfg.vocab_size:
        raise InteropError(f"{d}: the tokenizer has {tok.vocab_size} tokens, config.json's vocab_size is "
                           f"{cfg.vocab_size}")
    return tok


def load_pretrained(directory, dtype=None):
    """Read a GPT-2 checkpoint folder into cllm: returns ``(model, tokenizer)``.

    The folder holds ``config.json`` (model_type gpt2), ``model.safetensors`` (names as
    ``save_pretrained`` writes them, ``transformer.``-prefixed, or the bare names of the original Hub
    file with its ``attn.bias`` buffers) and the tokenizer: GPT-2's ``vocab.json`` + ``merges.txt``, or a
    ``tokenizer.json`` that cllm's export wrote. ``dtype`` (float32 or float64) defaults to the file's
    (float64 stays float64, everything else becomes float32). Anything wrong raises
    :class:`InteropError` with one line, before any large allocation.
    """
    return _load(directory, dtype)


def import_run(directory, out, dtype=None) -> Path:
    """Turn a GPT-2 checkpoint folder into a cllm run directory at ``out`` (step 0, fresh optimizer
    state), which ``train --resume``, ``generate`` and the step-through accept. Returns the checkpoint."""
    from .checkpoint import save_checkpoint
    from .optim import make_optimizer
    from .train import History

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InteropError(f"{out}: already exists and is not an empty directory; choose another --out")
    model, tok = _load(directory, dtype, optimizer_moments=2)
    cfg = model.cfg
    train_cfg = TrainConfig(seq_len=min(TrainConfig().seq_len, cfg.max_seq_len))
    opt = make_optimizer(model.params, train_cfg)
    state = dict(step=0, batch_rng=np.random.default_rng([train_cfg.seed, 2]).bit_generator.state,
                 dropout_rng=model.dropout_rng.bit_generator.state, history=History().to_dict())
    return save_checkpoint(out, 0, model.params, opt.state_dict(), cfg.to_dict(), train_cfg.to_dict(),
                           tok.to_dict(), state)


# ---------------------------------------------------------------------------------------------------
# export

def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def export_tensors(model) -> dict:
    """GPT-2 name -> contiguous array for ``model`` (a lattice embedding is materialised as wte)."""
    cfg = model.cfg
    if cfg.attention_bias != "none":
        hf_config(cfg)  # raises the one-line refusal
    out = {}
    for name, arr in model.params.items():
        if name == "lattice.proj":
            continue  # folded into wte below
        if name == "wte":
            arr = model.embedding_matrix()  # E = F W + R for a lattice embedding, (V, C)
        out[hf_name(name)] = np.ascontiguousarray(arr)
    return out


def _check_out(out: Path, force: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise InteropError(f"{out}: exists and is not a directory")
        if any(out.iterdir()) and not force:
            raise InteropError(f"{out}: already exists and is not empty; pass --force to replace it")


def export_hf(model, tokenizer, out, force: bool = False) -> Path:
    """Write ``model`` (and ``tokenizer``, if not None) as a Hugging Face GPT-2 folder at ``out``:
    config.json, model.safetensors and the tokenizer files, all at once (temp folder + rename).
    ``force`` replaces an existing non-empty folder."""
    out = Path(out)
    _check_out(out, force)
    stn = _safetensors_numpy()
    files = {} if tokenizer is None else tokenizer_files(tokenizer)
    if tokenizer is not None and tokenizer.vocab_size > model.cfg.vocab_size:
        raise InteropError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model {model.cfg.vocab_size}")
    bos, eos = special_ids(files)
    files[CONFIG] = _json_bytes(hf_config(model.cfg, bos, eos))
    tensors = export_tensors(model)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    aside = None
    try:
        stn.save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        if out.exists() and any(out.iterdir()):  # --force: the old folder goes only once the new one is in place
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent)) / out.name
            os.replace(out, aside)
        os.replace(tmp, out)
    except BaseException:
        if aside is not None and aside.exists() and not out.exists():
            os.replace(aside, out)
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside.parent, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside.parent, ignore_errors=True)
    return out


def export_run(run_dir, out, force: bool = False) -> Path:
    """``python -m cllm export RUN_DIR --format hf --out DIR``: the latest checkpoint of a run (or a
    checkpoint folder) as a Hugging Face GPT-2 folder."""
    from .checkpoint import load_checkpoint
    from .model import Model
    from .tokenizer import tokenizer_from_dict

    _check_out(Path(out), force)
    ck = load_checkpoint(run_dir)
    cfg = ModelConfig.from_dict(ck.model_cfg)
    hf_config(cfg)  # refuses what GPT-2 cannot express before anything else is done
    model = Model(cfg, seed=0)
    model.load_params(ck.params)
    tok = None if ck.tokenizer is None else tokenizer_from_dict(ck.tokenizer)
    return export_hf(model, tok, out, force=force)
