"""Byte-level BPE speed: cllm's BPETokenizer next to Hugging Face tokenizers (Rust), in one run.

    python -m cllm.lab.bench_bpe                 # medians of 3 repeats
    python -m cllm.lab.bench_bpe --repeats 5

1. Training a 2,000-token vocabulary on about 1 MB of text (target: at most 10 s). The text is the
   built-in corpus (465 KB) followed by Python standard-library sources (sorted by path, whole files,
   until the total reaches 1,000,000 bytes), so that the second half brings new words instead of
   repeating the first. Both trainers get the same text, min_frequency 2 and <|endoftext|>.
2. Encoding the built-in corpus with that vocabulary (target: at least 1 MB/s): cllm with an empty
   pre-token cache (a fresh tokenizer each repeat) and with a warm one; tokenizers' ``encode`` on the
   same single string, and its ``encode_batch`` over the lines (multi-threaded).
3. Loading a 50,257-token vocabulary (256 bytes + 50,000 merges + <|endoftext|>) from vocab.json and
   merges.txt (target: under 1 s). The files are trained here by tokenizers on the built-in corpus and
   the standard-library sources (about 13 MB) with min_frequency 1 (at 2, that text gives out near
   45,000 tokens): GPT-2's size without needing GPT-2's files.

Prints the CPU model first; every time is a median of ``--repeats`` runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from ..data import builtin_corpus
from ..tokenizer import ENDOFTEXT, BPETokenizer


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def stdlib_sources(limit_bytes=None) -> str:
    """Standard-library .py files (no tests, no site-packages), sorted by path, whole files."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for p in sorted(lib.rglob("*.py")):
        if "site-packages" in p.parts or "test" in p.parts or "tests" in p.parts:
            continue
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(t)
        total += len(t.encode("utf-8"))
        if limit_bytes is not None and total >= limit_bytes:
            break
    return "\n\n".join(parts)


CPU = {}  # label -> median process CPU seconds of the last median_time call with that label


def median_time(fn, repeats, label=None):
    """Median wall-clock seconds of ``repeats`` calls, and the last result. With ``label``, the median
    process CPU time is kept in CPU[label] (on a loaded machine it moves less than the wall clock)."""
    times, cpus, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    if label:
        CPU[label] = statistics.median(cpus)
    return statistics.median(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"cpu: {cpu_model()} ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.2f}")
    try:
        import tokenizers
    except ImportError:
        tokenizers = None
        print("tokenizers is not installed (pip install -r requirements-dev.txt): cllm figures only")

    corpus = builtin_corpus()
    extra = stdlib_sources(1_000_000 - len(corpus.encode("utf-8")))
    text = (corpus + "\n\n" + extra)
    text = text.encode("utf-8")[:1_000_000].decode("utf-8", errors="ignore")
    mb = len(text.encode("utf-8")) / 1e6
    print(f"training text: built-in corpus + standard-library sources, {mb:.3f} MB, {len(text):,} characters")

    def hf_train(txt, vocab_size, min_frequency=2):
        hf = tokenizers.ByteLevelBPETokenizer()
        hf.train_from_iterator([txt], vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[ENDOFTEXT],
                               show_progress=False)
        return hf

    # 1. training
    t_ours, ours = median_time(lambda: BPETokenizer.train(text, 2000, progress=False), args.repeats, "train")
    line = f"train 2,000 tokens on {mb:.2f} MB: cllm {t_ours:.2f} s ({CPU['train']:.2f} s CPU) (target <= 10 s: {'met' if t_ours <= 10 else 'NOT met'})"
    if tokenizers:
        t_hf, hf = median_time(lambda: hf_train(text, 2000), args.repeats)
        with tempfile.TemporaryDirectory() as d:
            hf.save_model(d)
            hf_in_cllm = BPETokenizer.from_gpt2_files(f"{d}/vocab.json", f"{d}/merges.txt")
        same = hf_in_cllm._merge_strings() == ours._merge_strings()
        line += f", tokenizers {t_hf:.2f} s, ratio cllm/tokenizers {t_ours / t_hf:.2f}; same merges: {same}"
    print(line)

    # 2. encoding the built-in corpus
    cmb = len(corpus.encode("utf-8")) / 1e6
    state = ours.to_dict()
    fresh = [BPETokenizer.from_dict(state) for _ in range(args.repeats)]
    cold_times, cold_cpu = [], []
    for tok in fresh:
        t0, c0 = time.perf_counter(), time.process_time()
        ids = tok.encode(corpus)
        cold_times.append(time.perf_counter() - t0)
        cold_cpu.append(time.process_time() - c0)
    t_cold = statistics.median(cold_times)
    t_warm, _ = median_time(lambda: fresh[0].encode(corpus), args.repeats)
    line = (f"encode built-in corpus ({cmb:.3f} MB, {len(ids):,} tokens): cllm {cmb / t_cold:.2f} MB/s with an empty "
            f"cache ({cmb / statistics.median(cold_cpu):.2f} MB/s of CPU time), {cmb / t_warm:.2f} MB/s warm (target >= 1 MB/s: {'met' if cmb / t_cold >= 1 else 'NOT met'})")
    if tokenizers:
        t_hfe, enc = median_time(lambda: hf.encode(corpus), args.repeats)
        line += (f"; tokenizers {cmb / t_hfe:.2f} MB/s, ratio cllm/tokenizers (empty cache) {t_cold / t_hfe:.2f}x the time"
                 f"; same ids (tokenizers' files loaded into cllm): {enc.ids == hf_in_cllm.encode_ids(corpus)}")
        lines = corpus.splitlines(keepends=True)
        t_hfb, _ = median_time(lambda: hf.encode_batch(lines), args.repeats)
        line += (f"; tokenizers encode_batch over the {len(lines):,} lines (its threads; a line end splits "
                 f"differently) {cmb / t_hfb:.2f} MB/s, ratio {t_cold / t_hfb:.2f}x the time")
    print(line)

    # 3. loading a GPT-2-sized vocabulary
    if not tokenizers:
        print("load 50,257 tokens: skipped (needs tokenizers to train the files)")
        return 0
    big_text = corpus + "\n\n" + stdlib_sources()
    t0 = time.perf_counter()
    big = hf_train(big_text, 50_257, min_frequency=1)
    t_big = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        big.save_model(d)
        v, m = f"{d}/vocab.json", f"{d}/merges.txt"
        t_load, tok = median_time(lambda: BPETokenizer.from_gpt2_files(v, m), args.repeats, "load")
        t_hfl, _ = median_time(lambda: tokenizers.ByteLevelBPETokenizer(v, m), args.repeats)
    print(f"load vocab.json + merges.txt with {tok.vocab_size:,} tokens and {len(tok.merges):,} merges "
          f"(trained by tokenizers on {len(big_text.encode('utf-8')) / 1e6:.1f} MB in {t_big:.1f} s): "
          f"cllm {t_load:.3f} s ({CPU['load']:.3f} s CPU) (target < 1 s: {'met' if t_load < 1 else 'NOT met'}), tokenizers {t_hfl:.3f} s, "
          f"ratio {t_load / t_hfl:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
