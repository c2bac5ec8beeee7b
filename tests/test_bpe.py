"""Byte-level BPE: the GPT-2 byte table and split pattern, exact ids against Hugging Face tokenizers and
transformers, the incremental trainer against a recount-everything reference and against tokenizers'
trainer, round trips, special tokens, GPT-2 files and checkpoints, every bad input, and the CLI.

The reference libraries are optional test extras (requirements-dev.txt); tests that need one are
skipped with the pip command when it is missing.
"""
import json
import math
import re

import numpy as np
import pytest

from cllm.data import builtin_corpus, split
from cllm.tokenizer import (ENDOFTEXT, BPETokenizer, bytes_to_unicode, load_tokenizer, tokenizer_from_dict)
from conftest import TINY_ARGS

VOCAB = 2000  # the reference vocabulary size (the benchmark's too)

STRESS = (
    "Café naïve résumé Ångström façade — “quotes” ‘single’ …\n"
    "東京タワーは高い。中文测试，标点！ 한국어 텍스트 Ελληνικά русский עברית العربية\n"
    "👍🏽 👩🏿‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷🇯🇵\n"
    "\ttab\t\tdouble tab   three spaces\n\n\n   \n  trailing  \r\n \t \n"
    "12345 3.14159 1,000,000 007 ²³ ⅫⅧ 2024-01-01 0x1F 1e-9\n"
    "it's don't we're they've I'm you'll he'd IT'S WE'RE 's 't 're 've 'm 'll 'd ''\n"
    "def f(x):\n    return x**2  # comment\n\tif x != 0: {'a': [1, 2]} // <html> &amp; $$ @@\n"
    "non\u00a0breaking\u00a0space zero\u200bwidth\u200bspace ideographic\u3000space \ufeffbom soft\u00adhyphen"
    "                                        end"
)


def _hf_install(name):
    return f"{name} is an optional test extra: pip install -r requirements-dev.txt (or pip install {name})"


@pytest.fixture(scope="module")
def corpus():
    return builtin_corpus()


@pytest.fixture(scope="module")
def ours(corpus):
    """cllm's own trainer, VOCAB tokens on the built-in corpus."""
    return BPETokenizer.train(corpus, VOCAB)


@pytest.fixture(scope="module")
def hf_files(corpus, tmp_path_factory):
    """tokenizers' ByteLevelBPETokenizer trained on the built-in corpus -> (tokenizer, folder with its
    vocab.json and merges.txt)."""
    tokenizers = pytest.importorskip("tokenizers", reason=_hf_install("tokenizers"))
    hf = tokenizers.ByteLevelBPETokenizer()
    hf.train_from_iterator([corpus], vocab_size=VOCAB, min_frequency=2, special_tokens=[ENDOFTEXT],
                           show_progress=False)
    folder = tmp_path_factory.mktemp("hf-bpe")
    hf.save_model(str(folder))
    return hf, folder


@pytest.fixture(scope="module")
def loaded(hf_files):
    _, folder = hf_files
    return BPETokenizer.from_gpt2_files(folder / "vocab.json", folder / "merges.txt")


# -- the pieces ------------------------------------------------------------------------------------

def test_byte_to_unicode_table():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[0] == "Ā" and table[0xAD] == "Ń"
    assert all(table[b] == chr(b) for b in range(ord("!"), ord("~") + 1))
    assert all(c.isprintable() and not c.isspace() for c in table.values())


def test_gpt2_split_pattern():
    tok = BPETokenizer.train("hello world", 256, special_tokens=())
    pieces = tok._split.findall("Hello world's  end 42x!?\n\n  x\tI'll")
    assert pieces == ["Hello", " world", "'s", " ", " end", " 42", "x", "!?", "\n\n ", " x", "\t", "I", "'ll"]
    assert "".join(tok._split.findall(STRESS)) == STRESS  # every character is in exactly one piece


def test_tie_break_is_highest_count_then_smallest_ids():
    # (a,b), (c,d) and (Ġ,c) all occur twice: 'a' < 'c' < 'Ġ' in the byte-character order, so the
    # merges come in that order; (Ġ,a) occurs once, below min_frequency=2, so training stops.
    tok = BPETokenizer.train("ab ab cd cd", 400, special_tokens=())
    assert tok._merge_strings() == ["a b", "c d", "Ġ cd"]
    assert tok.vocab_size == 259 and tok.id_to_token[256:] == ["ab", "cd", "Ġcd"]
    # min_frequency=1 adds (Ġ,a); then no pair is left, since merges never cross pre-tokens ("ab" | " ab")
    assert BPETokenizer.train("ab ab cd cd", 400, special_tokens=(), min_frequency=1)._merge_strings() == \
        ["a b", "c d", "Ġ cd", "Ġ ab"]


def _reference_merges(text, n_merges):
    """minbpe's teaching version: recount every pair of every word before each merge; same numbering
    and tie-break as BPETokenizer.train (highest count, then smallest ids; min_frequency 2)."""
    import regex
    from collections import Counter

    from cllm.tokenizer import GPT2_SPLIT

    table = bytes_to_unicode()
    base = sorted(table.values())
    tokens = list(base)
    byte_id = [base.index(table[b]) for b in range(256)]
    counts = Counter(regex.findall(GPT2_SPLIT, text))
    words = [[byte_id[b] for b in w.encode("utf-8")] for w in counts]
    freqs = list(counts.values())
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, f in zip(words, freqs):
            for p in zip(w, w[1:]):
                pairs[p] += f
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merged = tokens[best[0]] + tokens[best[1]]
        new = tokens.index(merged) if merged in tokens else len(tokens)
        if new == len(tokens):
            tokens.append(merged)
        merges.append(f"{tokens[best[0]]} {tokens[best[1]]}")
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
    return merges


def test_incremental_trainer_equals_full_recount(corpus):
    text = corpus[:30_000] + " aaaa aaaaa aaaaaaa abab ababab " * 5  # overlapping pairs (a, a), (ab, ab)
    tok = BPETokenizer.train(text, 256 + 150, special_tokens=())
    assert tok._merge_strings() == _reference_merges(text, len(tok.merges))
    assert len(tok.merges) == 150


def test_training_is_deterministic_and_stops_when_pairs_run_out(corpus):
    a = BPETokenizer.train(corpus[:20_000], 400)
    assert a == BPETokenizer.train(corpus[:20_000], 400)
    assert a.vocab_size == 400 and a.special_tokens == {ENDOFTEXT: 399}
    small = BPETokenizer.train("abc abc", 1000)  # few pairs: stops early, vocabulary smaller than asked
    assert small.vocab_size == 256 + len(small.merges) + 1 < 1000
    assert small._merge_strings() == ["a b", "ab c"]  # (Ġ, abc) occurs once


def test_special_tokens_are_never_split_nor_learned():
    text = ("hello<|endoftext|>world <|endoftext|><|endoftext|> again " * 50)
    tok = BPETokenizer.train(text, 300)
    assert len(tok.merges) > 5
    ordinary = [t for t in tok.id_to_token if t not in tok.special_tokens]
    assert not any(c in t for t in ordinary if len(t) > 1 for c in "<|>")  # no merge crosses or enters it
    eot = tok.special_tokens[ENDOFTEXT]
    assert eot == tok.vocab_size - 1
    # default: a literal "<|endoftext|>" in text is ordinary text, never the special id
    plain = tok.encode_ids("a<|endoftext|>b")
    assert eot not in plain and tok.decode(plain) == "a<|endoftext|>b"
    # allowed: matched as the special token, as tokenizers / GPT2TokenizerFast do
    ids = tok.encode_ids("a<|endoftext|>b", allowed_special="all")
    assert ids.count(eot) == 1 and tok.decode(ids) == "a<|endoftext|>b"
    assert ids == tok.encode_ids("a<|endoftext|>b", allowed_special={ENDOFTEXT})
    assert tok.encode("<|endoftext|>", allowed_special="all").tolist() == [eot]


def test_progress_bar(capsys):
    BPETokenizer.train("the cat sat on the mat " * 30, 280, progress=True)
    assert "bpe merges" in capsys.readouterr().err
    BPETokenizer.train("the cat sat on the mat " * 30, 280)  # short training: no bar by default
    assert "bpe merges" not in capsys.readouterr().err


# -- exact against the reference -------------------------------------------------------------------

def test_ids_equal_tokenizers_on_validation_text(hf_files, loaded, corpus):
    hf, _ = hf_files
    val = split(corpus, 0.1)[1]
    expected = hf.encode(val).ids
    assert loaded.encode_ids(val) == expected
    assert loaded.encode(val).tolist() == expected
    assert len(expected) > 10_000


def test_ids_equal_tokenizers_on_stress_text(hf_files, loaded):
    hf, _ = hf_files
    text = STRESS + " <|endoftext|>next<|endoftext|>"
    expected = hf.encode(text).ids
    assert loaded.encode_ids(text, allowed_special="all") == expected
    assert expected.count(loaded.special_tokens[ENDOFTEXT]) == 2
    assert hf.encode(STRESS).ids == loaded.encode_ids(STRESS)
    assert loaded.decode(expected) == text and hf.decode(expected, skip_special_tokens=False) == text


def test_ids_equal_gpt2_tokenizer_fast(hf_files, loaded, corpus):
    transformers = pytest.importorskip("transformers", reason=_hf_install("transformers"))
    _, folder = hf_files
    # from_pretrained reads the folder's vocab.json + merges.txt in transformers 4 and 5 alike (in 5,
    # GPT2TokenizerFast(vocab_file=..., merges_file=...) ignores the files and builds an empty model)
    gpt2 = transformers.GPT2TokenizerFast.from_pretrained(str(folder))
    assert len(gpt2) == loaded.vocab_size
    for text in (STRESS + "<|endoftext|>tail", split(corpus, 0.1)[1][:20_000]):
        expected = gpt2(text)["input_ids"]
        assert loaded.encode_ids(text, allowed_special="all") == expected
        assert gpt2.decode(expected) == loaded.decode(expected)


def test_own_trainer_matches_tokenizers_trainer(ours, loaded, hf_files, corpus):
    hf, _ = hf_files
    n_bytes = len(corpus.encode("utf-8"))
    ours_bpt = n_bytes / len(ours.encode(corpus))
    hf_bpt = n_bytes / len(hf.encode(corpus).ids)
    print(f"bytes per token at {VOCAB} tokens: cllm {ours_bpt:.4f}, tokenizers {hf_bpt:.4f}")
    assert abs(ours_bpt - hf_bpt) <= 0.02 * hf_bpt
    # same rule and numbering: the very same merges, in the same order
    assert ours._merge_strings() == loaded._merge_strings()
    assert ours.vocab_size == loaded.vocab_size == VOCAB


# -- round trips -----------------------------------------------------------------------------------

def test_round_trip_and_encode_paths_agree(ours, corpus):
    ids = ours.encode(corpus)
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert ours.decode(ids) == corpus and ours.decode(ours.encode(STRESS)) == STRESS
    assert ours.encode_ids(corpus[:50_000]) == ours.encode(corpus[:50_000]).tolist()
    assert ours.encode_array(STRESS).tolist() == ours.encode_ids(STRESS)
    assert ours.num_bytes(ids) == len(corpus.encode("utf-8"))
    assert ours.encode("").shape == (0,) and ours.decode([]) == ""


def test_cache_encodes_each_distinct_piece_once(corpus, monkeypatch):
    tok = BPETokenizer.train(corpus[:20_000], 400)
    calls = []
    real = tok._encode_piece
    monkeypatch.setattr(tok, "_encode_piece", lambda p: calls.append(p) or real(p))
    text = "the cat and the dog and the cat " * 100
    first = tok.encode(text)
    assert sorted(calls) == sorted(set(tok._split.findall(text)))   # once per distinct pre-token
    calls.clear()
    assert tok.encode(text).tolist() == first.tolist() and calls == []  # all from the cache


def test_decode_invalid_utf8_uses_replacement_characters(ours):
    byte_id = {b: ours.vocab[c] for b, c in bytes_to_unicode().items()}
    assert ours.decode([byte_id[0xE6]]) == "\ufffd"                         # a lone lead byte
    assert ours.decode([byte_id[0x80], byte_id[ord("a")]]) == "\ufffda"     # a lone continuation byte
    ids = ours.encode("東")
    assert ours.decode(ids) == "東" and ours.decode_bytes(ids) == "東".encode("utf-8")
    cut = [byte_id[b] for b in "東".encode("utf-8")[:2]] + [byte_id[ord("!")]]
    assert ours.decode(cut) == "\ufffd!"


def test_round_trip_property(ours):
    hypothesis = pytest.importorskip("hypothesis", reason=_hf_install("hypothesis"))
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=400, deadline=None)
    @hypothesis.given(st.text())
    def round_trip(s):
        assert ours.decode(ours.encode(s)) == s
        assert ours.decode(ours.encode(s, allowed_special="all")) == s
        assert ours.num_bytes(ours.encode(s)) == len(s.encode("utf-8"))

    round_trip()


def test_ids_equal_tokenizers_property(hf_files, loaded):
    hypothesis = pytest.importorskip("hypothesis", reason=_hf_install("hypothesis"))
    st = hypothesis.strategies
    hf, _ = hf_files
    # Code points below U+3000 and emoji; the three below U+3000 that Unicode 16-17 assigned as letters
    # (which the regex package knows and tokenizers' Oniguruma does not yet) are left out.
    chars = st.one_of(st.characters(max_codepoint=0x2FFF, exclude_categories=("Cs",),
                                    exclude_characters="\u088f\u0c5c\u0cdc"),
                      st.sampled_from(list(" \t\n'sdlmvetr0123东京👍🏽‍👨\u00a0\u200b")))

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(st.text(alphabet=chars))
    def same_ids(s):
        assert loaded.encode_ids(s) == hf.encode(s).ids

    same_ids()


# -- files and checkpoints -------------------------------------------------------------------------

def test_gpt2_files_round_trip(ours, loaded, tmp_path):
    vpath, mpath = ours.save_gpt2_files(tmp_path / "out")
    assert mpath.read_text(encoding="utf-8").splitlines()[0] == "#version: 0.2"
    assert len(mpath.read_text(encoding="utf-8").splitlines()) == 1 + len(ours.merges)
    vocab = json.loads(vpath.read_text(encoding="utf-8"))
    assert vocab["Ġ"] == ours.vocab["Ġ"] and vocab[ENDOFTEXT] == VOCAB - 1 and len(vocab) == VOCAB
    back = BPETokenizer.from_gpt2_files(vpath, mpath)
    assert back == ours and back.encode_ids(STRESS) == ours.encode_ids(STRESS)
    # a vocabulary with the special token first (tokenizers' layout) survives the round trip too
    again = BPETokenizer.from_gpt2_files(*loaded.save_gpt2_files(tmp_path / "hf"))
    assert again == loaded and again.special_tokens == {ENDOFTEXT: 0}


def test_checkpoint_dict_round_trip(ours, tmp_path):
    d = ours.to_dict()
    assert d["type"] == "bpe" and len(d["vocab"]) == VOCAB and d["special_tokens"] == [ENDOFTEXT]
    back = tokenizer_from_dict(json.loads(json.dumps(d)))
    assert isinstance(back, BPETokenizer) and back == ours and back.encode_ids(STRESS) == ours.encode_ids(STRESS)
    assert load_tokenizer(ours.save(tmp_path / "tok.json")) == ours
    assert BPETokenizer.load(tmp_path / "tok.json") == ours

    from cllm.checkpoint import load_checkpoint, save_checkpoint
    from cllm.config import ModelConfig
    from cllm.model import Model

    cfg = ModelConfig(vocab_size=ours.vocab_size, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_seq_len=8)
    model = Model(cfg, seed=0)
    save_checkpoint(tmp_path / "run", 1, model.params, {}, cfg.to_dict(), tokenizer_dict=d)
    assert tokenizer_from_dict(load_checkpoint(tmp_path / "run").tokenizer) == ours


# -- bad input -------------------------------------------------------------------------------------

def _one_line(exc):
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture
def good_files(tmp_path):
    tok = BPETokenizer.train("the cat sat on the mat; the cat ate the rat " * 20, 300)
    vpath, mpath = tok.save_gpt2_files(tmp_path / "good")
    return tok, vpath, mpath


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _pretty_vocab(tok):
    return "{\n" + ",\n".join(f" {json.dumps(t, ensure_ascii=False)}: {i}" for i, t in enumerate(tok.id_to_token)) + "\n}\n"


@pytest.mark.parametrize("case", ["not-json", "not-object", "duplicate-id", "duplicate-key", "gap", "negative",
                                  "string-id", "missing-byte", "not-utf8"])
def test_malformed_vocab_json(good_files, tmp_path, case):
    tok, _, mpath = good_files
    v = tmp_path / "vocab.json"
    lines = _pretty_vocab(tok).splitlines()
    the = 1 + tok.vocab["the"]  # line of "the" in the pretty file
    if case == "not-json":
        _write(v, "\n".join(lines[:5]) + "\n \"oops\" 3,\n}")
        needle = "line 6: not valid JSON"
    elif case == "not-object":
        _write(v, "[1, 2, 3]")
        needle = "expected a JSON object"
    elif case == "duplicate-id":
        lines[the] = lines[the].replace(f": {tok.vocab['the']}", ": 5")
        _write(v, "\n".join(lines))
        needle = f"line {the + 1}: id 5 of 'the' is already the id of"
    elif case == "duplicate-key":
        lines.insert(-1, ' "the": 9999,')
        lines[-3] += ","
        lines[-2] = lines[-2].rstrip(",")
        _write(v, "\n".join(lines))
        needle = "'the' appears twice"
    elif case == "gap":
        lines[the] = lines[the].replace(f": {tok.vocab['the']}", f": {tok.vocab_size + 3}")
        _write(v, "\n".join(lines))
        needle = f"ids are not contiguous: {tok.vocab_size} tokens with ids up to {tok.vocab_size + 3}, id {tok.vocab['the']} is missing"
    elif case == "negative":
        lines[the] = lines[the].replace(f": {tok.vocab['the']}", ": -1")
        _write(v, "\n".join(lines))
        needle = f"line {the + 1}: id of 'the' must be a non-negative integer"
    elif case == "string-id":
        lines[the] = lines[the].replace(f": {tok.vocab['the']}", ': "7"')
        _write(v, "\n".join(lines))
        needle = "must be a non-negative integer, got '7'"
    elif case == "missing-byte":
        lines[1] = lines[1].replace('"!"', '"<|other|>"')
        _write(v, "\n".join(lines))
        needle = "the single-byte token '!' (byte 0x21) is missing"
    else:
        v.write_bytes(b'{"a": 0, "\xff": 1}')
        needle = "not valid UTF-8"
    with pytest.raises(ValueError) as exc:
        BPETokenizer.from_gpt2_files(v, mpath)
    msg = _one_line(exc)
    assert msg.startswith(f"{v}:") and needle in msg, msg


@pytest.mark.parametrize("case", ["unknown-token", "result-missing", "three-parts", "one-part", "duplicate",
                                  "special-part"])
def test_malformed_merges_txt(good_files, tmp_path, case):
    tok, vpath, mpath = good_files
    lines = mpath.read_text(encoding="utf-8").splitlines()
    n = len(lines) + 1  # the line appended
    extra, needle = {
        "unknown-token": ("Ġthe zzzq", f"line {n}: the token 'zzzq' of merge 'Ġthe' 'zzzq' is not in"),
        "result-missing": ("q z", f"line {n}: the result 'qz' of merge 'q' 'z' is not in"),
        "three-parts": ("a b c", f"line {n}: expected two tokens separated by one space"),
        "one-part": ("ab", f"line {n}: expected two tokens separated by one space"),
        "duplicate": (lines[1], f"line {n}: merge {lines[1].split()[0]!r} {lines[1].split()[1]!r} repeats merge 0"),
        "special-part": (f"{ENDOFTEXT} a", "is not in the vocabulary"),
    }[case]
    m = _write(tmp_path / "merges.txt", "\n".join(lines + [extra]) + "\n")
    if case == "special-part":  # a merge built on the special token: its result is not in the vocabulary
        needle = f"line {n}: the result '{ENDOFTEXT}a'"
    with pytest.raises(ValueError) as exc:
        BPETokenizer.from_gpt2_files(vpath, m)
    msg = _one_line(exc)
    assert msg.startswith(f"{m}:") and needle in msg, msg


def test_missing_files_and_failed_save_write_nothing(good_files, tmp_path):
    tok, vpath, mpath = good_files
    with pytest.raises(FileNotFoundError, match="nope.json: no such file"):
        BPETokenizer.from_gpt2_files(tmp_path / "nope.json", mpath)
    with pytest.raises(FileNotFoundError, match="nope.txt: no such file"):
        BPETokenizer.from_gpt2_files(vpath, tmp_path / "nope.txt")
    blocker = _write(tmp_path / "a-file", "mine")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        tok.save_gpt2_files(blocker)
    assert blocker.read_text() == "mine"
    before = {p.name: p.read_bytes() for p in (tmp_path / "good").iterdir()}
    tok.save_gpt2_files(tmp_path / "good")  # overwriting with the same tokenizer: same bytes, no temp files left
    assert {p.name: p.read_bytes() for p in (tmp_path / "good").iterdir()} == before


@pytest.mark.parametrize("kwargs,needle", [
    (dict(text="", vocab_size=300), "text: cannot train"),
    (dict(text="abc", vocab_size=256), "vocab_size must be an integer >= 257 (256 bytes + 1 special tokens), got 256"),
    (dict(text="abc", vocab_size=100, special_tokens=()), "vocab_size must be an integer >= 256"),
    (dict(text="abc", vocab_size=300.0), "vocab_size"),
    (dict(text="abc", vocab_size=300, special_tokens=("",)), "special_tokens"),
    (dict(text="abc", vocab_size=300, special_tokens=("a",)), "special_tokens: 'a' is also an ordinary token"),
    (dict(text="abc", vocab_size=300, min_frequency=0), "min_frequency"),
])
def test_bad_training_arguments(kwargs, needle):
    text = kwargs.pop("text")
    with pytest.raises(ValueError) as exc:
        BPETokenizer.train(text, **kwargs)
    assert needle in _one_line(exc)


def test_bad_encode_decode_arguments(ours):
    with pytest.raises(ValueError) as exc:
        ours.decode([0, VOCAB])
    assert f"token id {VOCAB} is outside the vocabulary (0..{VOCAB - 1})" in _one_line(exc)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.decode([-1])
    with pytest.raises(ValueError, match="1-D"):
        ours.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="integers"):
        ours.decode([1.5])
    with pytest.raises(ValueError, match="expects a str"):
        ours.encode(b"bytes")
    with pytest.raises(ValueError, match=re.escape("'<|pad|>', which is not a special token of this vocabulary ('<|endoftext|>')")):
        ours.encode("x", allowed_special={"<|pad|>"})
    with pytest.raises(ValueError, match="allowed_special must be 'all'"):
        ours.encode("x", allowed_special="none")
    no_specials = BPETokenizer.train("abc abc", 300, special_tokens=())
    with pytest.raises(ValueError, match=re.escape("'<|endoftext|>', which is not a special token of this vocabulary (none)")):
        no_specials.encode("x<|endoftext|>", allowed_special={ENDOFTEXT})
    assert no_specials.decode(no_specials.encode("x<|endoftext|>", allowed_special="all")) == "x<|endoftext|>"


def test_bad_checkpoint_dicts(ours):
    d = ours.to_dict()
    for bad, needle in [({**d, "merges": None}, "merges list"), ({**d, "vocab": {"a": 0}}, "list of token strings"),
                        ({**d, "vocab": d["vocab"][:-2] + [d["vocab"][0], ENDOFTEXT]}, "appears twice"),
                        ({**d, "special_tokens": ["nope"]}, "'nope' is not in the vocabulary"),
                        ({**d, "merges": d["merges"] + ["Ġ zz"]}, "'zz'")]:
        with pytest.raises(ValueError) as exc:
            tokenizer_from_dict(bad)
        assert needle in _one_line(exc)


# -- command line and bits per byte ----------------------------------------------------------------

TINY = TINY_ARGS + ["--sample-tokens", "20"]


@pytest.fixture
def text_file(tmp_path):  # beyond ASCII, so that bytes and characters differ
    path = tmp_path / "tiny.txt"
    path.write_text("the quick brown fox jumps over the lazy dog; naïve café 東京. " * 60, encoding="utf-8")
    return path


def test_cli_train_resume_generate_bpe(capsys, tmp_path, text_file):
    from cllm.__main__ import main
    from cllm.checkpoint import load_checkpoint

    out_dir = tmp_path / "run"
    assert main(["train", "--data", str(text_file), "--tokenizer", "bpe", "--vocab-size", "300", "--steps", "6",
                 "--out", str(out_dir)] + TINY) == 0
    out = capsys.readouterr().out
    assert "vocabulary 300" in out and "bits per byte" in out and "sample:" in out
    ck = load_checkpoint(out_dir)
    tok = tokenizer_from_dict(ck.tokenizer)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 300 and ck.model_cfg["vocab_size"] == 300
    # the tokenizer was learned on the training split only: the same as training on the first 90%
    text = text_file.read_text(encoding="utf-8")
    assert tok == BPETokenizer.train(split(text, 0.1)[0], 300)
    h = ck.trainer_state["history"]
    assert len(h["val_bpb"]) == len(h["val_loss"]) == 2
    ids = tok.encode(text)
    val_ids = split(ids, 0.1)[1]
    bpt = tok.num_bytes(val_ids) / len(val_ids)
    assert np.allclose(h["val_bpb"], np.array(h["val_loss"]) / bpt / math.log(2))
    assert main(["train", "--data", str(text_file), "--steps", "9", "--resume", str(out_dir), "--no-progress",
                 "--sample-tokens", "0"]) == 0
    capsys.readouterr()
    h = load_checkpoint(out_dir).trainer_state["history"]
    assert len(h["val_bpb"]) == len(h["val_loss"]) == 3 and None not in h["val_bpb"]
    assert main(["generate", "--checkpoint", str(out_dir), "--prompt", "the 東", "--tokens", "5", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("the 東")


def test_cli_bpe_user_errors(capsys, tmp_path, text_file):
    from cllm.__main__ import main

    for argv, needle in [(["--tokenizer", "bpe", "--vocab-size", "100"], "--vocab-size: vocab_size must be an integer >= 257"),
                         (["--vocab-size", "300"], "--vocab-size applies to --tokenizer bpe only"),
                         (["--tokenizer", "bpe", "--vocab-size", "x"], "--vocab-size")]:
        code = main(["train", "--data", str(text_file), "--out", str(tmp_path / "r")] + argv + TINY)
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("cllm: error:") and needle in err, err
    assert not (tmp_path / "r").exists()


def _small_trainer(tokenizer, text, bpt):
    from cllm.config import ModelConfig, TrainConfig
    from cllm.model import Model
    from cllm.train import Trainer

    ids = tokenizer.encode(text)
    train_ids, val_ids = split(ids, 0.2)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=8, n_layers=1, n_heads=2, d_ff=16, max_seq_len=8)
    return Trainer(Model(cfg, seed=0), train_ids, val_ids, TrainConfig(batch_size=2, seq_len=8, steps=2),
                   tokenizer=tokenizer, progress=False, val_bytes_per_token=bpt)


def test_bits_per_byte_for_characters_and_old_histories():
    from cllm.tokenizer import CharTokenizer
    from cllm.train import History

    text = "abcdefgh " * 40
    tok = CharTokenizer.fit(text)
    trainer = _small_trainer(tok, text, 1.0)  # ASCII: one byte per character token
    seen = []
    trainer.callbacks.append(lambda t, event, info: seen.append(info) if event == "eval" else None)
    loss = trainer.run_eval()
    assert trainer.history.val_bpb == [pytest.approx(loss / math.log(2))] and seen[0]["val_bpb"] == trainer.history.val_bpb[0]
    # a history saved before val_bpb existed: padded with None so the lists stay aligned
    old = {k: v for k, v in trainer.history.to_dict().items() if k != "val_bpb"}
    old.update(val_step=[1, 2], val_loss=[3.0, 2.5])
    trainer.history = History.from_dict(old)
    trainer.run_eval()
    assert trainer.history.val_bpb[:2] == [None, None] and len(trainer.history.val_bpb) == 3
    plain = _small_trainer(tok, text, None)  # no bytes per token given: bpb recorded as None
    plain.run_eval()
    assert plain.history.val_bpb == [None] and len(plain.history.val_loss) == 1
    with pytest.raises(ValueError, match="val_bytes_per_token must be a positive number"):
        _small_trainer(tok, text, 0.0)


def test_tokens_outside_the_byte_alphabet():
    base = {c: i for i, c in enumerate(sorted(bytes_to_unicode().values()))}
    # "\n" is not a byte character (that is "Ċ"); as a vocabulary entry that no merge makes it counts as
    # a special token, but a merge result holding it cannot stand for bytes
    with pytest.raises(ValueError) as exc:
        BPETokenizer({**base, "\n": 256, "Ġ\n": 257}, [("Ġ", "\n")])
    assert "token 'Ġ\\n' holds characters outside GPT-2's byte alphabet" in _one_line(exc)
    with pytest.raises(ValueError) as exc:
        BPETokenizer({**base, "<|x|>": 256, "ab": 257}, ["a b"], special_tokens=[])
    assert "token '<|x|>' is neither a byte, a merge result nor a special token" in _one_line(exc)
    tok = BPETokenizer({**base, "<|x|>": 256, "ab": 257}, ["a b"], special_tokens=["<|x|>"])
    assert tok.decode(tok.encode("ab<|x|>", allowed_special="all")) == "ab<|x|>" and tok.encode("ab").tolist() == [257]
