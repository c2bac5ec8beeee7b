"""The fused numba kernels (cllm/kernels) against the numpy reference ops, and the kernel selection.

Equality bounds, per tensor, as max |kernel - numpy| / max |numpy|:

* float64: 1e-12 (observed: at most a few 1e-16, i.e. a few units in the last place);
* float32: 32 * float32 epsilon = 3.8e-6 (observed: up to about 2e-7). The kernels sum rows in
  float64 and round once, numpy sums in float32, so the two differ by float32 rounding only.

The whole model (float64) with numba kernels against numpy: every gradient within 1e-10 of numpy's.
The fused AdamW performs the chunked numpy step's operations in the same order, in the same dtype,
and is checked to be bit-identical to it.
"""
import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cllm
from cllm import ops
from cllm.config import PRESETS
from cllm.kernels import check, ops_for, resolve

ROOT = Path(__file__).resolve().parents[1]
HAVE_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed (no wheel for this Python?)")
TOL = {"float64": 1e-12, "float32": 32 * float(np.finfo(np.float32).eps)}


def rel_err(a, ref):
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert a.shape == ref.shape
    return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-300))


def assert_close(a, ref, dtype, what=""):
    assert np.asarray(a).dtype == np.asarray(ref).dtype, what
    err = rel_err(a, ref)
    assert err <= TOL[dtype], f"{what}: {err:.3g} > {TOL[dtype]:.3g}"


def _child(code, **env):
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=600)


# ---------------------------------------------------------------------------------------- selection
def test_import_is_fast_and_the_numpy_path_never_loads_numba():
    code = ("import time, sys; t = time.perf_counter(); import cllm; dt = time.perf_counter() - t\n"
            "m = cllm.Model(cllm.ModelConfig(), kernels='numpy'); m.forward([[1, 2, 3]], [[2, 3, 4]])\n"
            "d = cllm.Model(cllm.ModelConfig())\n"
            "print(dt, 'numba' in sys.modules, m.kernels, d.kernels)")
    proc = _child(code)
    assert proc.returncode == 0, proc.stderr
    dt, loaded, path, default = proc.stdout.split()
    assert float(dt) < 0.3, f"import cllm took {float(dt):.3f} s"
    assert loaded == "False" and path == "numpy" and default == "numpy"


def test_bad_choices_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^kernels must be one of 'auto', 'numpy', 'numba', got 'fast'$"):
        check("fast")
    with pytest.raises(ValueError, match="kernels must be one of"):
        cllm.Model(PRESETS["tiny"].model, kernels="fast")
    from cllm.train import Trainer
    m = cllm.Model(PRESETS["tiny"].model)
    with pytest.raises(ValueError, match="kernels must be one of"):
        Trainer(m, np.arange(100) % 11, None, cllm.TrainConfig(seq_len=8), kernels="gpu")
    assert m.kernels == "numpy"  # unchanged by the refused choice


def test_without_numba_auto_falls_back_with_one_notice_and_numba_is_refused():
    code = ("import sys; sys.modules['numba'] = None  # as if numba had no wheel for this Python\n"
            "import numpy as np, cllm\n"
            "from cllm.train import Trainer\n"
            "m = cllm.Model(cllm.ModelConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, d_ff=32, "
            "max_seq_len=8), kernels='auto')\n"
            "cllm.Model(m.cfg, kernels='auto')\n"
            "t = Trainer(m, np.arange(200) % 11, None, cllm.TrainConfig(batch_size=2, seq_len=8, steps=2), "
            "progress=False, kernels='auto'); t.train()\n"
            "print(m.kernels, t.optimizer.kernels, t.step)\n"
            "try:\n    cllm.Model(m.cfg, kernels='numba')\nexcept ValueError as e:\n    print('refused:', e)\n")
    proc = _child(code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "numpy numpy 2"
    assert lines[1].startswith("refused: kernels='numba' needs numba") and "pip install numba" in lines[1]
    notice = [l for l in proc.stderr.splitlines() if l.strip()]
    assert notice == ["cllm: numba is not available; using the numpy kernels (pip install numba for the fused ones)"]


@needs_numba
def test_auto_picks_numba_and_the_namespace_has_every_op():
    assert resolve("auto") == "numba"
    ns = ops_for("numba")
    assert ops_for("numba") is ns and ops_for("numpy") is ops
    for name in ops.__all__:
        assert callable(getattr(ns, name)) or not callable(getattr(ops, name)), name
    from cllm.kernels import fused
    for name in fused.OPS:  # the fused ones really are replaced
        assert getattr(ns, name) is getattr(fused, name) and getattr(ns, name) is not getattr(ops, name)
    for name in set(fused.KERNELS) - set(fused.OPS):  # measured slower: numpy's op stays
        assert getattr(ns, name) is getattr(ops, name) and callable(getattr(fused, name))


@needs_numba
def test_threading_layer_is_threadsafe():
    from cllm.kernels import threadsafe
    from cllm.kernels import fused
    assert fused.threading_layer() in ("omp", "tbb")
    assert threadsafe()


# ---------------------------------------------------------------------------------------- every kernel
@pytest.fixture(scope="module")
def F():
    """Every kernel (cllm.kernels.fused), also those the numba namespace leaves to numpy (fused.OPS)."""
    if not HAVE_NUMBA:
        pytest.skip("numba is not installed")
    from cllm.kernels import fused
    return fused


DTYPES = ["float32", "float64"]


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm(F, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 17, 96)) * 3 + 1).astype(dtype)
    w, b = rng.standard_normal(96).astype(dtype), rng.standard_normal(96).astype(dtype)
    ref, got = ops.layernorm_forward(x, w, b), F.layernorm_forward(x, w, b)
    for r, g, what in zip(ref, got, ("out", "mean", "rstd")):
        assert_close(g, r, dtype, what)
    d = rng.standard_normal(x.shape).astype(dtype)
    ref_b, got_b = ops.layernorm_backward(d, x, w, ref[1], ref[2]), F.layernorm_backward(d, x, w, ref[1], ref[2])
    for r, g, what in zip(ref_b, got_b, ("dx", "dw", "db")):
        assert_close(g, r, dtype, what)


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["gelu", "tanh"])
def test_activations(F, dtype, name):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 9, 130)) * 3).astype(dtype)
    d = rng.standard_normal(x.shape).astype(dtype)
    assert_close(F.activation_forward(x, name), ops.activation_forward(x, name), dtype, "forward")
    assert_close(F.activation_backward(d, x, name), ops.activation_backward(d, x, name), dtype, "backward")
    fwd, bwd = getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward")
    assert_close(fwd(x), getattr(ops, f"{name}_forward")(x), dtype, "forward")
    assert_close(bwd(d, x), getattr(ops, f"{name}_backward")(d, x), dtype, "backward")


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias,dropout", [(False, 0.0), (True, 0.0), (False, 0.2)])
def test_attention(F, dtype, bias, dropout):
    rng = np.random.default_rng(2)
    B, T, H, hd = 2, 13, 3, 8
    qkv = (rng.standard_normal((B, T, 3 * H * hd)) * 2).astype(dtype)
    bb = rng.standard_normal((B, H, T, T)).astype(dtype) if bias else None
    ref = ops.attention_forward(qkv, H, bb, dropout, np.random.default_rng(5))
    got = F.attention_forward(qkv, H, bb, dropout, np.random.default_rng(5))
    assert_close(got[0], ref[0], dtype, "y")
    assert_close(got[1], ref[1], dtype, "probs")
    assert np.all(np.triu(got[1][0, 0], 1) == 0)  # nothing above the diagonal
    if dropout:
        assert np.array_equal(got[2], ref[2])  # the same draws: the same masks
    dy = rng.standard_normal(ref[0].shape).astype(dtype)
    dq_ref, ds_ref = ops.attention_backward(dy, qkv, ref[1], H, ref[2], return_dscores=True)
    dq, ds = F.attention_backward(dy, qkv, ref[1], H, ref[2], return_dscores=True)
    assert_close(dq, dq_ref, dtype, "dqkv")
    assert_close(ds, ds_ref, dtype, "dscores")
    assert_close(F.attention_backward(dy, qkv, ref[1], H, ref[2]), dq_ref, dtype, "dqkv")


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ignore", [None, 3, -100])
def test_cross_entropy(F, dtype, ignore):
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((3, 11, 70)) * 4).astype(dtype)
    logits[0, 0, :] = 1e4  # large logits stay finite (log-sum-exp after the max)
    logits[0, 1, 5] = -1e4
    targets = rng.integers(0, 70, (3, 11))
    targets[1, :4] = 3 if ignore is None else ignore  # some rows with the ignore index
    l_ref, p_ref = ops.cross_entropy_forward(logits, targets, ignore)
    l_got, p_got = F.cross_entropy_forward(logits, targets, ignore)
    assert np.isfinite(l_got) and abs(l_got - l_ref) <= TOL[dtype] * abs(l_ref)
    assert_close(p_got, p_ref, dtype, "probs")
    d_ref = ops.cross_entropy_backward(p_ref, targets, ignore)
    d_got = F.cross_entropy_backward(p_ref, targets, ignore)
    assert_close(d_got, d_ref, dtype, "dlogits")
    if ignore is not None:
        assert np.all(d_got[targets == ignore] == 0)
    all_ignored = np.full_like(targets, 3)
    assert F.cross_entropy_forward(logits, all_ignored, 3)[0] == ops.cross_entropy_forward(logits, all_ignored, 3)[0] == 0.0
    for bad in (70, -2):  # outside the vocabulary: the same one-line error as the numpy op, no kernel read
        targets[2, 5] = bad
        with pytest.raises(ValueError, match=r"targets must be classes in \[0, 70\)"):
            F.cross_entropy_forward(logits, targets, ignore)
        with pytest.raises(ValueError, match=r"targets must be classes in \[0, 70\)"):
            F.cross_entropy_backward(p_ref, targets, ignore)


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_scatter(F, dtype):
    rng = np.random.default_rng(4)
    d = rng.standard_normal((4, 9, 40)).astype(dtype)
    idx = rng.integers(0, 6, (4, 9))  # many repeats: they must accumulate
    assert_close(F.embedding_backward(d, idx, 8), ops.embedding_backward(d, idx, 8), dtype, "dwte")


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_norm", [0.0, 1.0, 1e6])
def test_clip_grad_norm(dtype, max_norm):
    from cllm.kernels import fused
    from cllm.optim import clip_grad_norm
    rng = np.random.default_rng(5)
    shapes = [(300, 70), (70,), (1,), (5, 3, 2)]
    ref = {str(i): rng.standard_normal(s).astype(dtype) for i, s in enumerate(shapes)}
    got = {k: v.copy() for k, v in ref.items()}
    n_ref, n_got = clip_grad_norm(ref, max_norm), fused.clip_grad_norm(got, max_norm)
    assert abs(n_got - n_ref) <= TOL[dtype] * n_ref
    for k in ref:
        assert_close(got[k], ref[k], dtype, k)


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_adamw_is_bit_identical_to_the_chunked_step(dtype):
    from cllm.optim import AdamW
    rng = np.random.default_rng(6)
    shapes = {"h.0.w": (130, 70), "h.0.b": (70,), "wte": (50, 16)}
    init = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    pa, pb = ({k: v.copy() for k, v in init.items()} for _ in range(2))
    a = AdamW(pa, lr=1e-2, weight_decay=0.1, chunk_size=1000, threads=2)
    b = AdamW(pb, lr=1e-2, weight_decay=0.1, kernels="numba")
    assert b.kernels == "numba" and a.kernels == "numpy"
    for step in range(5):
        g = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
        a.step(g, lr=1e-2 / (step + 1))
        b.step(g, lr=1e-2 / (step + 1))
    for k in init:
        assert np.array_equal(pa[k], pb[k]), k
    sa, sb = a.state_dict(), b.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)


@needs_numba
def test_results_do_not_depend_on_the_thread_count(F):
    import numba
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 96)).astype(np.float32)
    w, b = np.ones(96, np.float32), np.zeros(96, np.float32)
    d = rng.standard_normal(x.shape).astype(np.float32)
    _, mean, rstd = ops.layernorm_forward(x, w, b)
    from cllm.kernels import _numba as K
    outs = []
    for n in (1, 2):
        numba.set_num_threads(n)  # the kernels called directly: no resynchronisation with BLAS
        outs.append((K.layernorm_backward(d, x, w, mean, rstd), K.sum_squares(x.reshape(-1)),
                     K.embedding_backward(x, rng.integers(0, 5, 64) * 0, 5)))
    (l1, s1, e1), (l2, s2, e2) = outs
    assert all(np.array_equal(u, v) for u, v in zip(l1, l2)) and s1 == s2 and np.array_equal(e1, e2)


# ---------------------------------------------------------------------------------------- the whole model
VARIANTS = [dict(), dict(activation="tanh", tie_weights=False), dict(dropout=0.2),
            dict(embedding="lattice", attention_bias="lattice")]


@needs_numba
@pytest.mark.parametrize("extra", VARIANTS, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()) or "default")
def test_model_gradients_equal_numpy_in_float64(extra):
    cfg = dataclasses.replace(PRESETS["tiny"].model, **extra)
    a, b = cllm.Model(cfg, seed=1), cllm.Model(cfg, seed=1, kernels="numba")
    assert b.kernels == "numba"
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, cfg.vocab_size, (3, 8)), rng.integers(0, cfg.vocab_size, (3, 8))
    _, la, acts_a = a.forward(x, y, rng=np.random.default_rng(9))
    _, lb, acts_b = b.forward(x, y, rng=np.random.default_rng(9))
    assert abs(la - lb) <= 1e-12 * abs(la)
    ga, gb = a.backward(acts_a), b.backward(acts_b)
    for k in ga:
        assert gb[k].dtype == ga[k].dtype
        assert np.max(np.abs(ga[k] - gb[k])) <= 1e-10, k


@needs_numba
def test_data_parallel_on_numba_matches_numpy():
    from cllm.parallel import DataParallel
    cfg = dataclasses.replace(PRESETS["tiny"].model, max_seq_len=16)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, cfg.vocab_size, (6, 16)), rng.integers(0, cfg.vocab_size, (6, 16))
    res = {}
    for path in ("numpy", "numba", "numba"):
        model = cllm.Model(cfg, seed=2, kernels=path)
        dp = DataParallel(model, 2)
        assert dp.workers == 2
        loss, parts = dp.forward(x, y)
        res.setdefault(path, []).append((loss, dp.backward(parts, model.zeros_like_params())))
        dp.close()
    (ln, gn), = res["numpy"]
    (l1, g1), (l2, g2) = res["numba"]
    assert l1 == l2 and all(np.array_equal(g1[k], g2[k]) for k in g1)  # deterministic on two threads
    assert abs(l1 - ln) <= 1e-12 and all(np.max(np.abs(g1[k] - gn[k])) <= 1e-10 for k in gn)


# ---------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def corpus():
    from cllm.data import builtin_corpus, split
    from cllm.tokenizer import CharTokenizer
    text = builtin_corpus()[:30_000]
    tok = CharTokenizer.fit(text)
    train, val = split(tok.encode(text), 0.1)
    return tok, train, val


def _train_cfg(**kw):
    return cllm.TrainConfig(batch_size=4, seq_len=16, steps=12, eval_interval=6, eval_max_batches=2,
                            checkpoint_interval=6, warmup_steps=2, lr_decay_steps=12, **kw)


def _mcfg(tok):
    return cllm.ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=16)


@needs_numba
@pytest.mark.parametrize("workers", [1, 2])
def test_numba_training_resumes_bit_identically(corpus, tmp_path, workers):
    from cllm.train import Trainer
    tok, train, val = corpus
    cfg = _train_cfg(workers=workers)
    straight = Trainer(cllm.Model(_mcfg(tok), seed=1), train, val, cfg, tokenizer=tok, run_dir=tmp_path / "a",
                       progress=False, kernels="numba")
    assert straight.optimizer.kernels == "numba" and straight.model.kernels == "numba"
    straight.train()
    first = Trainer(cllm.Model(_mcfg(tok), seed=1), train, val, cfg, tokenizer=tok, run_dir=tmp_path / "b",
                    progress=False, kernels="numba")
    first.train(steps=6)
    resumed = Trainer.resume(tmp_path / "b", train, val, progress=False, kernels="numba")
    assert resumed.model.kernels == "numba"
    resumed.train()
    assert resumed.history.train_loss == straight.history.train_loss
    assert resumed.history.val_loss == straight.history.val_loss
    assert all(np.array_equal(straight.model.params[k], resumed.model.params[k]) for k in straight.model.params)


@needs_numba
def test_a_run_may_resume_on_the_other_path(corpus, tmp_path):
    from cllm.train import Trainer
    tok, train, val = corpus
    cfg = _train_cfg()
    numpy_run = Trainer(cllm.Model(_mcfg(tok), seed=1), train, val, cfg, tokenizer=tok, run_dir=tmp_path / "a",
                        progress=False)
    numpy_run.train()
    first = Trainer(cllm.Model(_mcfg(tok), seed=1), train, val, cfg, tokenizer=tok, run_dir=tmp_path / "b",
                    progress=False)
    first.train(steps=6)
    resumed = Trainer.resume(tmp_path / "b", train, val, progress=False, kernels="numba")
    assert resumed.model.kernels == "numba" and resumed.optimizer.kernels == "numba"
    resumed.train()
    # float32: the two paths round differently, so the runs part by rounding, not more
    assert np.allclose(resumed.history.train_loss, numpy_run.history.train_loss, rtol=1e-4)
    assert resumed.history.train_loss[:6] == numpy_run.history.train_loss[:6]


def test_cli_kernels_flag(tmp_path, capsys):
    from cllm.__main__ import main
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    tiny = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32", "--seq-len", "16",
            "--batch-size", "4", "--no-progress", "--sample-tokens", "0", "--data", str(text)]
    assert main(["train", "--steps", "2", "--out", str(tmp_path / "r"), "--kernels", "numpy"] + tiny) == 0
    out = capsys.readouterr().out
    assert "kernels: numpy" in out
    assert main(["train", "--kernels", "cuda", "--out", str(tmp_path / "s")] + tiny) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cllm: error:") and "--kernels" in err[0]
    assert not (tmp_path / "s").exists()
    if HAVE_NUMBA:  # resuming on the other path is allowed
        assert main(["train", "--steps", "3", "--resume", str(tmp_path / "r"), "--kernels", "numba"] + tiny) == 0
        assert "kernels: numba" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- the cache
@needs_numba
def test_cache_files_are_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for name in ("cllm/kernels/__pycache__/_numba.adamw_-1.py311.nbi", "cllm/kernels/__pycache__/x.nbc"):
        proc = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT)
        assert proc.returncode == 0, f"{name} is not ignored by git"


@needs_numba
def test_kernels_work_where_no_cache_folder_is_writable(tmp_path):
    """A read-only install: the package's __pycache__, NUMBA_CACHE_DIR and the user's cache folder all
    unusable (paths through a plain file, which even root cannot create folders in)."""
    pkg = tmp_path / "site"
    shutil.copytree(ROOT / "cllm", pkg / "cllm", ignore=shutil.ignore_patterns("__pycache__", "corpus"))
    (pkg / "cllm" / "kernels" / "__pycache__").write_text("not a folder")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = ("import numpy as np\nfrom cllm.kernels import _numba as K, ops_for\n"
            "x = np.linspace(-3, 3, 50)\nprint(K.CACHED, float(np.max(np.abs(ops_for('numba').tanh_forward(x) - np.tanh(x)))))")
    e = dict(os.environ, PYTHONPATH=str(pkg), NUMBA_CACHE_DIR=str(blocker / "numba"),
             XDG_CACHE_HOME=str(blocker / "cache"), HOME=str(blocker))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cached, err = proc.stdout.split()
    assert cached == "False" and float(err) < 1e-12


# ---------------------------------------------------------------------------------------- the bench
@pytest.mark.parametrize("name", ["seed", "small", "tiny"])
def test_gemm_shapes_are_the_steps_matmul_flops(name):
    from cllm.lab.bench import gemm_shapes, step_flops
    cfg, B = PRESETS[name].model, PRESETS[name].batch_size
    T = cfg.max_seq_len
    flops = sum(2 * count * batch * m * k * n for count, batch, m, k, n in gemm_shapes(cfg, B, T))
    assert flops == step_flops(cfg, B, T)


def test_bench_first_line_names_the_cpu_and_the_blas_kernel():
    from cllm.lab.bench import machine_line
    line = machine_line()
    assert "BLAS" in line and "cores" in line and "OPENBLAS_CORETYPE=" in line


@needs_numba
def test_time_paths_times_both_paths_in_one_process():
    from cllm.lab.bench import gemm_time, time_paths
    cfg = dataclasses.replace(PRESETS["tiny"].model, dtype="float32")
    r = time_paths(cfg, 2, 2)
    assert set(r) == {"numpy", "numba"}
    assert all(r[k]["step"] >= r[k]["forward"] > 0 for k in r)
    assert gemm_time(cfg, 2, cfg.max_seq_len, repeats=1) > 0


@needs_numba
def test_kernel_threads_follow_blas_inside_the_data_parallel_region():
    import threading
    import numba
    from cllm.kernels import fused, threads
    from cllm.parallel import blas_controls, blas_threads
    if blas_controls() is None:
        pytest.skip("BLAS threads cannot be controlled here")
    outside = threads()
    seen = []
    with blas_threads(1):
        assert threads() == 1
        worker = threading.Thread(target=lambda: seen.append((fused.sync_threads(), numba.get_num_threads())))
        worker.start()
        worker.join()
    assert seen == [(1, 1)]  # a worker thread's kernels run on one thread, as its BLAS does
    assert threads() == outside
