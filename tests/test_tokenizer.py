"""Character and word tokenizers: vocabularies, exact round trips, unknowns, JSON save/load."""
import json

import numpy as np
import pytest

from cllm.data import builtin_corpus
from cllm.tokenizer import (UNK, CharTokenizer, WordTokenizer, load_tokenizer, tokenizer_from_dict)


@pytest.fixture(scope="module")
def corpus():
    return builtin_corpus()


# -- characters ------------------------------------------------------------------------------------

def test_char_vocab_sorted_by_code_point_and_ids():
    tok = CharTokenizer.fit("hello, world")
    assert tok.chars == sorted(set("hello, world"))
    assert tok.chars == [" ", ",", "d", "e", "h", "l", "o", "r", "w"]
    ids = tok.encode("hello")
    assert ids.dtype == np.int64 and ids.shape == (5,)
    assert ids.tolist() == [4, 3, 5, 5, 6]
    assert tok.decode(ids) == "hello"
    assert tok.decode([0, 1]) == " ,"
    assert tok.encode("").shape == (0,)
    assert CharTokenizer(["b", "a"]).chars == ["a", "b"]


def test_char_round_trip_on_builtin_corpus(corpus):
    tok = CharTokenizer.fit(corpus)
    ids = tok.encode(corpus)
    assert ids.shape == (len(corpus),) and ids.min() == 0 and ids.max() == tok.vocab_size - 1
    assert tok.decode(ids) == corpus
    # the vectorised encoder agrees with a per-character dict lookup on a sample
    index = {c: i for i, c in enumerate(tok.chars)}
    sample = corpus[:5000]
    assert tok.encode(sample).tolist() == [index[c] for c in sample]


def test_char_unknown_characters_named_in_one_line():
    tok = CharTokenizer.fit("abc def")
    with pytest.raises(ValueError) as err:
        tok.encode("a €bé c é")
    msg = str(err.value)
    assert msg == "text contains characters not in the vocabulary: 'é', '€'"
    with pytest.raises(ValueError, match=r"'\\n'"):
        tok.encode("a\nb")  # shown escaped, so the message stays on one line


def test_char_bad_inputs():
    tok = CharTokenizer.fit("ab")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([0, 2])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="duplicate"):
        CharTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab"])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.fit("")


# -- words -----------------------------------------------------------------------------------------

def test_word_splitting_covers_every_character():
    text = "Hello, world!  x_1=42\n\n\tdef __init__(self): café"
    toks = WordTokenizer.split(text)
    assert "".join(toks) == text
    assert toks[:6] == ["Hello", ",", " ", "world", "!", "  "]
    assert "42" in toks and "\n\n\t" in toks and "__init__" in toks and "café" in toks
    assert "x_" in toks and "1" in toks  # a digit ends a word: words are letters and underscores


def test_word_round_trip_on_builtin_corpus(corpus):
    tok = WordTokenizer.fit(corpus)
    ids = tok.encode(corpus)
    assert ids.dtype == np.int64
    assert tok.decode(ids) == corpus
    assert (ids != 0).all()  # default settings: every token of the training text is known
    assert tok.vocab[0] == UNK
    # most frequent first
    counts = np.bincount(ids, minlength=tok.vocab_size)
    assert (np.diff(counts[1:]) <= 0).all()


def test_word_unknowns_min_freq_and_max_vocab():
    text = "b a c a b c d"  # ' ' x6, a/b/c x2 each, d x1
    tok = WordTokenizer.fit(text, min_freq=2)
    assert tok.vocab == [UNK, " ", "a", "b", "c"]
    ids = tok.encode("a d e a")
    assert ids.tolist() == [2, 1, 0, 1, 0, 1, 2]
    assert tok.decode(ids) == "a <unk> <unk> a"
    # ties (a, b, c all twice) broken by the token string, whatever the order of the text
    small = WordTokenizer.fit(text, max_vocab=3)
    assert small.vocab == [UNK, " ", "a"]
    assert WordTokenizer.fit("c b a b c a d", max_vocab=3).vocab == small.vocab
    with pytest.raises(ValueError, match="min_freq"):
        WordTokenizer.fit(text, min_freq=0)
    with pytest.raises(ValueError, match="max_vocab"):
        WordTokenizer.fit(text, max_vocab=1)


def test_word_codes_are_stored():
    tok = WordTokenizer.fit("the cat the dog", codes={"the": 2 * 3, "cat": 5 * 7})
    d = tok.to_dict()
    assert d["codes"] == {"the": 6, "cat": 35}
    again = tokenizer_from_dict(json.loads(json.dumps(d)))
    assert again.codes == {"the": 6, "cat": 35} and again == tok
    assert WordTokenizer.fit("x").to_dict()["codes"] is None
    with pytest.raises(ValueError, match="positive integer"):
        WordTokenizer.fit("x", codes={"x": 0})


# -- JSON ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["char", "word"])
def test_save_load_round_trip(tmp_path, kind):
    text = "To be, or not to be: that is the question.\n"
    tok = (CharTokenizer if kind == "char" else WordTokenizer).fit(text)
    path = tok.save(tmp_path / "tok.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.json"]  # no temp file left behind
    assert json.loads(path.read_text(encoding="utf-8"))["type"] == kind
    again = load_tokenizer(path)
    assert type(again) is type(tok) and again == tok
    assert again.decode(again.encode(text)) == text
    assert type(tok).load(path) == tok
    tok.save(path)  # overwriting works (os.replace)
    assert load_tokenizer(path) == tok


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        load_tokenizer(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"type": "bpe", "vocab": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="wrong.json"):
        load_tokenizer(wrong)
    nounk = tmp_path / "nounk.json"
    nounk.write_text(json.dumps({"type": "word", "vocab": ["a", "b"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="nounk.json"):
        load_tokenizer(nounk)
    word = WordTokenizer.fit("a b").save(tmp_path / "word.json")
    with pytest.raises(ValueError, match="word.json.*not a char tokenizer"):
        CharTokenizer.load(word)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")
