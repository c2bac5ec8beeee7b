"""Built-in corpus, text loading, split, random batches, epochs and evaluation windows."""
import hashlib
import sys

import numpy as np
import pytest

from cllm.data import (CORPUS_SHA256, batches_per_epoch, builtin_corpus, builtin_topics, epoch_batches,
                       eval_batches, eval_windows, get_batch, load_text, num_windows, split)


def test_builtin_corpus():
    text = builtin_corpus()
    assert isinstance(text, str)
    assert text == builtin_corpus()  # deterministic
    # the same snapshot on every Python: pinned by its checksum, whatever the interpreter ships
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == CORPUS_SHA256
    assert CORPUS_SHA256 == "71f2ff5d99bdc1f9c48c5c2353ad138201c5ca1c377e0226857ef8fa89b8bcee"
    assert len(text) == 465_126
    assert len(set(text)) == 103
    assert "\n\n" in text and "def" in text


def test_builtin_topics_are_the_snapshot():
    topics = builtin_topics()
    assert len(topics) == 79 and "while" in topics and topics["while"].startswith("The ")
    assert builtin_corpus() == "\n\n".join(topics[k] for k in sorted(topics))


@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7), reason="the snapshot was taken from CPython 3.11.7's topics")
def test_snapshot_equals_this_interpreters_topics():
    from pydoc_data.topics import topics

    assert builtin_topics() == dict(topics)


# -- load_text ---------------------------------------------------------------------------------------

def test_load_text_file_and_folder(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("héllo\nworld", encoding="utf-8")
    assert load_text(f) == "héllo\nworld"
    assert load_text(str(f)) == "héllo\nworld"

    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("second", encoding="utf-8")
    (d / "a.txt").write_text("first", encoding="utf-8")
    (d / "sub" / "c.txt").write_text("third", encoding="utf-8")
    (d / "empty.txt").write_text("", encoding="utf-8")        # skipped
    (d / "notes.md").write_text("not a .txt", encoding="utf-8")  # ignored
    assert load_text(d) == "first\n\nsecond\n\nthird"


def test_load_text_utf8_bom_dropped(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes(b"\xef\xbb\xbfabc")
    assert load_text(f) == "abc"


def _one_line_naming(exc_info, path):
    msg = str(exc_info.value)
    assert str(path) in msg, msg
    assert "\n" not in msg
    return msg


def test_load_text_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError) as e:
        load_text(missing)
    _one_line_naming(e, missing)

    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        load_text(empty)
    assert "empty" in _one_line_naming(e, empty)

    binary = tmp_path / "data.txt"
    binary.write_bytes(b"abc\x00\x01\x02")
    with pytest.raises(ValueError) as e:
        load_text(binary)
    assert "binary" in _one_line_naming(e, binary)

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError) as e:
        load_text(latin1)
    assert "UTF-8" in _one_line_naming(e, latin1)

    nofiles = tmp_path / "nofiles"
    nofiles.mkdir()
    (nofiles / "x.bin").write_bytes(b"\x00")
    with pytest.raises(ValueError) as e:
        load_text(nofiles)
    assert ".txt" in _one_line_naming(e, nofiles)

    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.txt").write_text("", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        load_text(blank)
    _one_line_naming(e, blank)

    bad_in_folder = tmp_path / "mixed"
    bad_in_folder.mkdir()
    (bad_in_folder / "ok.txt").write_text("fine", encoding="utf-8")
    (bad_in_folder / "z.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError) as e:
        load_text(bad_in_folder)
    _one_line_naming(e, bad_in_folder / "z.txt")  # the offending file, not just the folder


# -- split -------------------------------------------------------------------------------------------

def test_split():
    ids = np.arange(1241)
    train, val = split(ids)
    assert len(train) == 1116 and len(val) == 125
    np.testing.assert_array_equal(np.concatenate([train, val]), ids)
    assert np.shares_memory(train, ids)  # slices, not copies
    t, v = split("abcdefghij", val_frac=0.2)
    assert (t, v) == ("abcdefgh", "ij")
    assert split(ids, val_frac=0.0)[1].size == 0
    with pytest.raises(ValueError, match="val_frac"):
        split(ids, val_frac=1.0)


# -- random batches ----------------------------------------------------------------------------------

def test_get_batch_windows_and_targets():
    data = np.arange(100, 1100, dtype=np.int32)  # value = position + 100
    rng = np.random.default_rng(0)
    x, y = get_batch(data, 16, 32, rng)
    assert x.shape == y.shape == (16, 32) and x.dtype == y.dtype == np.int64
    assert x.flags.c_contiguous and y.flags.c_contiguous
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)  # contiguous windows
    np.testing.assert_array_equal(y, x + 1)               # targets = next token
    assert x.min() >= 100 and y.max() <= 1099
    x2, _ = get_batch(data, 16, 32, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)                  # reproducible from the seed
    # every start in [0, N - T) can occur, including the last one
    starts = np.concatenate([get_batch(np.arange(10), 64, 8, rng)[0][:, 0] for _ in range(5)])
    assert set(starts.tolist()) == {0, 1}


def test_too_short_data_says_how_many_tokens_are_needed():
    with pytest.raises(ValueError, match="needs at least 33"):
        get_batch(np.arange(32), 4, 32, np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs at least 33"):
        eval_windows(np.arange(10), 32)
    x, y = eval_windows(np.arange(33), 32)  # exactly enough
    assert x.shape == (1, 32) and y[0, -1] == 32
    with pytest.raises(ValueError, match="at least 129 tokens"):
        list(epoch_batches(np.arange(100), 4, 32))


# -- epochs and evaluation -----------------------------------------------------------------------------

def test_epoch_batches_seed_project_numbers():
    data = np.arange(1241)
    assert num_windows(1241, 32) == 38
    assert batches_per_epoch(1241, 4, 32) == 9
    assert batches_per_epoch(1241, 4, 32, drop_last=False) == 10
    batches = list(epoch_batches(data, 4, 32))
    assert len(batches) == 9
    xs = np.concatenate([x for x, _ in batches])            # (36, 32)
    ys = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(xs[:, 0], np.arange(36) * 32)  # text order, non-overlapping
    np.testing.assert_array_equal(ys, xs + 1)
    last = list(epoch_batches(data, 4, 32, drop_last=False))
    assert len(last) == 10 and last[-1][0].shape == (2, 32)


def test_epoch_batches_shuffled():
    data = np.arange(1241)
    rng = np.random.default_rng(1)
    e1 = np.concatenate([x[:, 0] for x, _ in epoch_batches(data, 4, 32, rng)])
    e2 = np.concatenate([x[:, 0] for x, _ in epoch_batches(data, 4, 32, rng)])
    for starts in (e1, e2):
        assert len(starts) == 36 and len(set(starts.tolist())) == 36   # no window twice
        assert set(starts.tolist()) <= set((np.arange(38) * 32).tolist())
    assert not np.array_equal(e1, e2)                                  # a new order per epoch
    assert not np.array_equal(np.sort(e1), e1)                         # actually shuffled


def test_eval_windows_and_batches():
    data = np.arange(125)
    x, y = eval_windows(data, 32)
    assert x.shape == (3, 32) and x.dtype == np.int64
    np.testing.assert_array_equal(x.ravel(), np.arange(96))
    np.testing.assert_array_equal(y.ravel(), np.arange(1, 97))
    parts = list(eval_batches(data, 32, 2))
    assert [p[0].shape[0] for p in parts] == [2, 1]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
