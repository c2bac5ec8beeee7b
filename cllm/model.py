"""The GPT-style model: parameters, initialisation, forward pass (fills the activation store) and
backward pass (from the cross-entropy at the logits back to every parameter).

One block, as in GPT-2 (pre-LayerNorm):

    x = x + c_proj(attention(c_attn(ln_1(x))))
    x = x + mlp_proj(act(mlp_fc(ln_2(x))))

and around the blocks: token + position embeddings below, a final LayerNorm and an output head
(the token embedding, transposed, unless ``tie_weights=False``) above.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from . import ops
from .activations import ActivationStore, check_memory, param_bytes, param_count
from .config import ModelConfig
from .kernels import ops_for as kernels_ops_for


class BlockNames:
    """The names of block ``l``'s parameters and saved activations, built once per layer, so that the
    forward pass, the backward pass, the cached generation and the parameter layout all index the same
    strings (GPT-2's layout: ``h.{l}.ln_1.weight``, ``h.{l}.attn.c_attn.weight``, ...)."""

    def __init__(self, l: int):
        p = f"h.{l}."
        # parameters
        self.ln_1_w, self.ln_1_b = p + "ln_1.weight", p + "ln_1.bias"
        self.c_attn_w, self.c_attn_b = p + "attn.c_attn.weight", p + "attn.c_attn.bias"
        self.c_proj_w, self.c_proj_b = p + "attn.c_proj.weight", p + "attn.c_proj.bias"
        self.beta = p + "attn.lattice_beta"
        self.ln_2_w, self.ln_2_b = p + "ln_2.weight", p + "ln_2.bias"
        self.fc_w, self.fc_b = p + "mlp.c_fc.weight", p + "mlp.c_fc.bias"
        self.proj_w, self.proj_b = p + "mlp.c_proj.weight", p + "mlp.c_proj.bias"
        # saved activations (see cllm/activations.py for what each is for)
        self.ln_1_in, self.ln_1_mean, self.ln_1_rstd, self.ln_1_out = (p + "ln_1." + k for k in ("in", "mean", "rstd", "out"))
        self.qkv, self.probs, self.attn_drop, self.y = (p + "attn." + k for k in ("qkv", "probs", "drop", "y"))
        self.attn_resid_drop = p + "attn.resid_drop"
        self.ln_2_in, self.ln_2_mean, self.ln_2_rstd, self.ln_2_out = (p + "ln_2." + k for k in ("in", "mean", "rstd", "out"))
        self.pre, self.act, self.mlp_resid_drop = p + "mlp.pre", p + "mlp.act", p + "mlp.resid_drop"


@functools.lru_cache(maxsize=None)
def block_names(l: int) -> BlockNames:
    return BlockNames(l)


class _Gradients:
    """Where the backward pass puts what it computes: the gradients (into the caller's preallocated
    buffers when ``out`` is given) and, with a ``trace`` list, the gradient of every saved activation
    in the order it was computed (for the step-through)."""

    def __init__(self, trace=None, out=None):
        self.grads = {}
        self.out = out
        self.record = (lambda name, grad: trace.append((name, grad))) if trace is not None else (lambda name, grad: None)

    def buffer(self, name):
        """The preallocated array to write ``name``'s gradient into, or None."""
        return None if self.out is None else self.out.get(name)

    def finish(self, order) -> dict:
        """The gradients in the parameters' ``order``: a new dict, or ``out`` with every gradient
        copied in that was not written there directly."""
        g = self.grads
        if self.out is None:
            return {k: g[k] for k in order}
        for k in order:
            if g[k] is not self.out[k]:
                np.copyto(self.out[k], g[k])
        return self.out


def param_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    """Names and shapes of every parameter, in the model's order (GPT-2 layout, weights (in, out))."""
    V, C, F, L = cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.n_layers
    shapes = {"wte": (V, C), "wpe": (cfg.max_seq_len, C)}
    if cfg.embedding == "lattice":
        shapes["lattice.proj"] = (cfg.lattice_features, C)
    for l in range(L):
        n = block_names(l)
        shapes.update({n.ln_1_w: (C,), n.ln_1_b: (C,), n.c_attn_w: (C, 3 * C), n.c_attn_b: (3 * C,),
                       n.c_proj_w: (C, C), n.c_proj_b: (C,)})
        if cfg.attention_bias == "lattice":
            shapes[n.beta] = (cfg.n_heads,)
        shapes.update({n.ln_2_w: (C,), n.ln_2_b: (C,), n.fc_w: (C, F), n.fc_b: (F,),
                       n.proj_w: (F, C), n.proj_b: (C,)})
    shapes["ln_f.weight"] = (C,)
    shapes["ln_f.bias"] = (C,)
    if not cfg.tie_weights:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def _init_tensor(name, shape, cfg: ModelConfig, rng: np.random.Generator) -> np.ndarray:
    """Initial value of one parameter (float64; the caller casts)."""
    if name.endswith(".bias") or name.endswith("lattice_beta"):
        return np.zeros(shape)  # biases 0; lattice attention starts as plain attention
    if ".ln_" in name or name.startswith("ln_f"):
        return np.ones(shape)  # LayerNorm gain 1
    if name in ("wte", "wpe", "lm_head.weight"):
        return rng.normal(0.0, 0.02, size=shape)  # embeddings and head: GPT-2's std 0.02 in every init
    fan_in, fan_out = shape
    if cfg.init == "gpt2":
        std = 0.02
        if name.endswith("c_proj.weight"):  # residual projections: keep the stream's variance bounded
            std = 0.02 / math.sqrt(2 * cfg.n_layers)
    elif cfg.init == "xavier":
        std = math.sqrt(2.0 / (fan_in + fan_out))
    else:  # "he"
        std = math.sqrt(2.0 / fan_in)
    return rng.normal(0.0, std, size=shape)


class Model:
    """A decoder-only transformer with hand-written forward and backward passes.

    ``model.params`` maps GPT-2-style names to arrays of ``cfg.dtype``; ``model.backward`` returns a
    dict with the same keys, shapes and dtype, so an optimiser is one loop over names.
    """

    def __init__(self, cfg: ModelConfig, seed: int = 0, features=None, kernels: str = "numpy"):
        """``features``: with ``cfg.embedding == "lattice"``, a fixed (V, lattice_features) matrix to use as
        F in E = F W + R instead of the prime features of the tokens' codes (clock features, a random
        control, ...). It is kept in ``buffers["lattice.features"]``; the initial parameters do not
        depend on it. Such an F is not part of the config, so a checkpoint could not restore it: the
        trainer refuses to checkpoint a model built with one (``features_given``)."""
        if not isinstance(cfg, ModelConfig):
            raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
        self.use_kernels(kernels)  # before anything is built: a bad choice changes nothing
        check_memory(param_bytes(cfg), f"a model of {param_count(cfg):,} parameters")  # before building any
        self.cfg = cfg
        self.dtype = np.dtype(cfg.dtype)
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.params: dict[str, np.ndarray] = {
            name: _init_tensor(name, shape, cfg, rng).astype(self.dtype)
            for name, shape in param_shapes(cfg).items()
        }
        self.dropout_rng = np.random.default_rng([seed, 1])  # dropout masks, separate from init
        self.buffers: dict[str, np.ndarray] = {}  # fixed (not learned) tensors, e.g. lattice features
        if cfg.embedding == "lattice" or cfg.attention_bias == "lattice" or cfg.lattice_reg > 0:
            from .lattice.model import init_lattice_params, lattice_buffers
            self.buffers.update(lattice_buffers(cfg))
            if cfg.embedding == "lattice":
                init_lattice_params(self.params, cfg, np.random.default_rng([seed, 3]))
        if features is not None:
            if cfg.embedding != "lattice":
                raise ValueError(f"features are the F of embedding='lattice'; this config has embedding={cfg.embedding!r}")
            F = np.asarray(features)
            want = (cfg.vocab_size, cfg.lattice_features)
            if F.shape != want or not np.issubdtype(F.dtype, np.floating) or not np.all(np.isfinite(F)):
                raise ValueError(f"features must be a finite float array of shape {want} (vocab_size, "
                                 f"lattice_features), got {F.dtype} {F.shape}")
            self.buffers["lattice.features"] = np.ascontiguousarray(F, dtype=self.dtype)  # (V, k)
        self.features_given = features is not None

    # ------------------------------------------------------------------ bookkeeping
    def use_kernels(self, kernels: str) -> str:
        """Compute with the ops of ``kernels``: "numpy" (:mod:`cllm.ops`, the reference), "numba" (the
        fused kernels of :mod:`cllm.kernels`) or "auto" (numba when it imports). How, not what: the
        parameters, and so a checkpoint, mean the same on either path. Returns the path chosen."""
        self.ops = kernels_ops_for(kernels)  # the one dispatch: every op below is self.ops.<name>
        self.kernels = "numpy" if self.ops is ops else "numba"
        return self.kernels

    def num_params(self) -> int:
        """Number of learned scalars (a tied head is counted once)."""
        return int(sum(p.size for p in self.params.values()))

    def load_params(self, params: dict) -> None:
        """Copy ``params`` into the model, in place, after checking names, shapes and dtypes."""
        missing = [k for k in self.params if k not in params]
        unknown = [k for k in params if k not in self.params]
        if missing or unknown:
            raise ValueError(f"parameter names do not match the config: missing {missing[:3]}, unknown {unknown[:3]}")
        for name, value in params.items():
            value = np.asarray(value)
            if value.shape != self.params[name].shape:
                raise ValueError(f"parameter {name}: shape {value.shape}, expected {self.params[name].shape}")
            if value.dtype != self.dtype:
                raise ValueError(f"parameter {name}: dtype {value.dtype}, expected {self.dtype}")
            self.params[name][...] = value

    def zeros_like_params(self) -> dict:
        return {k: np.zeros_like(v) for k, v in self.params.items()}

    def _check_ids(self, name, ids, ignore=False):
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array of shape (B, T), got {ids.dtype} {ids.shape}")
        if ids.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"{name}: sequence length {ids.shape[1]} exceeds max_seq_len={self.cfg.max_seq_len}")
        if ids.shape[1] == 0 or ids.shape[0] == 0:
            raise ValueError(f"{name} must have at least one row and one position, got shape {ids.shape}")
        low = ids.min() if not ignore else ids[ids != ops.IGNORE_INDEX].min(initial=0)
        if low < 0 or ids.max() >= self.cfg.vocab_size:
            raise ValueError(f"{name}: token ids must lie in [0, {self.cfg.vocab_size - 1}] (vocab_size), "
                             f"got min {ids.min()} and max {ids.max()}")
        return ids

    # ------------------------------------------------------------------ forward
    def embedding_matrix(self) -> np.ndarray:
        """The (V, C) token embedding used for lookup and by a tied head."""
        if self.cfg.embedding == "lattice":
            from .lattice.model import lattice_embedding_forward
            return lattice_embedding_forward(self.buffers["lattice.features"], self.params["lattice.proj"],
                                             self.params["wte"])
        return self.params["wte"]

    def forward(self, idx, targets=None, train=True, rng=None):
        """Run the model on token ids ``idx`` (B, T).

        Returns (logits (B, T, V), loss or None, acts). ``acts`` is the :class:`ActivationStore` the
        backward pass reads. Dropout (``cfg.dropout > 0``) is active only when ``train`` is true; its
        masks come from ``rng`` (or the model's own generator), so a fixed ``rng`` fixes the masks.
        A target equal to ``ops.IGNORE_INDEX`` (-1) is left out of the mean loss and gets no gradient
        (e.g. every position but the answer's in a task that is scored at one position).
        """
        cfg, P = self.cfg, self.params
        idx = self._check_ids("idx", idx)
        if targets is not None:
            targets = self._check_ids("targets", targets, ignore=True)  # IGNORE_INDEX: not in the loss
            if targets.shape != idx.shape:
                raise ValueError(f"targets shape {targets.shape} must equal idx shape {idx.shape}")
        B, T = idx.shape
        H = cfg.n_heads
        p_drop = cfg.dropout if train else 0.0
        rng = rng if rng is not None else self.dropout_rng
        acts = ActivationStore(idx, targets, train=bool(p_drop))

        wte = self.embedding_matrix()  # (V, C)
        x = self.ops.embedding_forward(idx, wte) + self.ops.position_forward(T, P["wpe"])  # (B, T, C)
        x, m = self.ops.dropout_forward(x, p_drop, rng)
        if m is not None:
            acts["emb.drop"] = m

        basis = None
        if cfg.attention_bias == "lattice":
            from .lattice.model import lattice_attention_basis
            basis = lattice_attention_basis(self.buffers["lattice.angles"], self.buffers["lattice.freqs"], idx
                                            ).astype(self.dtype, copy=False)
            acts["lattice.attn_basis"] = basis  # (B, H, T, T)

        for l in range(cfg.n_layers):
            x = self.block_forward(l, x, acts, self._causal_attention(l, acts, basis, p_drop, rng), p_drop, rng)

        acts["ln_f.in"] = x
        h, acts["ln_f.mean"], acts["ln_f.rstd"] = self.ops.layernorm_forward(x, P["ln_f.weight"], P["ln_f.bias"])
        acts["ln_f.out"] = h  # final hidden state (B, T, C)
        head = wte if cfg.tie_weights else P["lm_head.weight"]  # (V, C)
        logits = self.ops.linear_forward(h, head.T)  # (B, T, C) @ (C, V) -> (B, T, V)
        acts["logits"] = logits
        loss = None
        if targets is not None:
            loss, acts["probs"] = self.ops.cross_entropy_forward(logits, targets, ops.IGNORE_INDEX)
            if cfg.lattice_reg > 0:  # one objective: what is reported is what is differentiated
                from .lattice.model import gcd_regulariser
                reg, _ = gcd_regulariser(wte, self.buffers["lattice.laplacian"], cfg.lattice_reg)
                loss += reg
            acts.loss = loss
        return logits, loss, acts

    def block_forward(self, l, x, acts, attend, p_drop=0.0, rng=None):
        """Block ``l`` on the residual stream ``x`` (B, T, C) -> (B, T, C), the one definition of a block:

            x = x + drop(c_proj(attend(c_attn(ln_1(x)))))
            x = x + drop(mlp_proj(act(mlp_fc(ln_2(x)))))

        ``attend(qkv) -> y`` (B, T, 3C) -> (B, T, C) is the attention between the two projections:
        causal self-attention over the block's own positions in training (:meth:`forward`), or over
        the cached keys and values in generation (:func:`cllm.generate.forward_cached`). What the
        backward pass needs is saved into ``acts`` (generation passes a store that keeps nothing).
        """
        P, n = self.params, block_names(l)
        # --- attention branch
        acts[n.ln_1_in] = x
        h, acts[n.ln_1_mean], acts[n.ln_1_rstd] = self.ops.layernorm_forward(x, P[n.ln_1_w], P[n.ln_1_b])  # (B, T, C)
        acts[n.ln_1_out] = h
        a = self._attention_branch(l, h, acts, attend)  # (B, T, C)
        a, m = self.ops.dropout_forward(a, p_drop, rng)
        if m is not None:
            acts[n.attn_resid_drop] = m
        x = self.ops.residual_forward(x, a)  # (B, T, C)
        # --- MLP branch
        acts[n.ln_2_in] = x
        h, acts[n.ln_2_mean], acts[n.ln_2_rstd] = self.ops.layernorm_forward(x, P[n.ln_2_w], P[n.ln_2_b])
        acts[n.ln_2_out] = h
        pre = self.ops.linear_forward(h, P[n.fc_w], P[n.fc_b])  # (B, T, F)
        acts[n.pre] = pre
        act = self.ops.activation_forward(pre, self.cfg.activation)  # (B, T, F)
        acts[n.act] = act
        f = self.ops.linear_forward(act, P[n.proj_w], P[n.proj_b])  # (B, T, C)
        f, m = self.ops.dropout_forward(f, p_drop, rng)
        if m is not None:
            acts[n.mlp_resid_drop] = m
        return self.ops.residual_forward(x, f)  # (B, T, C)

    def _attention_branch(self, l, h, acts, attend):
        """c_proj(attend(c_attn(h))): the attention branch of block ``l`` on ln_1's output ``h``."""
        P, n = self.params, block_names(l)
        qkv = self.ops.linear_forward(h, P[n.c_attn_w], P[n.c_attn_b])  # (B, T, 3C)
        acts[n.qkv] = qkv
        y = attend(qkv)  # (B, T, C)
        acts[n.y] = y
        return self.ops.linear_forward(y, P[n.c_proj_w], P[n.c_proj_b])  # (B, T, C)

    def _causal_attention(self, l, acts, basis, p_drop, rng):
        """Block ``l``'s ``attend`` for training: causal multi-head attention over all T positions
        (plus the lattice bias beta_h * basis when there is one); it saves the probabilities (and the
        dropout mask) for the backward pass."""
        P, n, H = self.params, block_names(l), self.cfg.n_heads

        def attend(qkv):
            bias = None if basis is None else P[n.beta][None, :, None, None] * basis  # (B, H, T, T)
            y, acts[n.probs], m = self.ops.attention_forward(qkv, H, bias, p_drop, rng)  # (B, T, C)
            if m is not None:
                acts[n.attn_drop] = m
            return y

        return attend

    # ------------------------------------------------------------------ backward
    def backward(self, acts: ActivationStore, dlogits=None, trace=None, out=None, scale=1.0) -> dict:
        """Gradients of the mean cross-entropy stored in ``acts`` with respect to every parameter.

        ``dlogits`` may be given instead (B, T, V) to backpropagate another objective of the logits.
        Returns a dict with the same keys, shapes and dtype as ``self.params``. With a list as
        ``trace``, the gradient with respect to each saved activation is appended to it as
        (buffer name, array) in the order the backward pass computes them (for step-through views).
        ``out`` (a dict like the returned one, e.g. from :meth:`zeros_like_params`) receives the
        gradients in place and is returned: the big weight gradients are written straight into it,
        so a training loop allocates them once instead of every step. ``scale`` gives the gradients of
        ``scale`` times the objective (the data-parallel step weights each share of a batch this way).
        """
        if not isinstance(acts, ActivationStore):
            raise ValueError(f"backward needs the ActivationStore that forward returned (logits, loss, acts = "
                             f"model.forward(idx, targets)), got {type(acts).__name__}")
        cfg, P = self.cfg, self.params
        sink = _Gradients(trace, out)
        grads = sink.grads
        dlogits = self._dlogits(acts, dlogits, scale)  # (B, T, V)
        sink.record("logits", dlogits)

        wte = self.embedding_matrix()
        head = wte if cfg.tie_weights else P["lm_head.weight"]
        dh, dhead_t, _ = self.ops.linear_backward(dlogits, acts["ln_f.out"], head.T, has_bias=False)  # dW (C, V)
        dhead = dhead_t.T  # (V, C)
        sink.record("ln_f.out", dh)
        dx, grads["ln_f.weight"], grads["ln_f.bias"] = self.ops.layernorm_backward(
            dh, acts["ln_f.in"], P["ln_f.weight"], acts["ln_f.mean"], acts["ln_f.rstd"])  # (B, T, C)
        sink.record("ln_f.in", dx)

        for l in reversed(range(cfg.n_layers)):
            dx = self._block_backward(l, dx, acts, sink)  # gradient of the stream entering block l

        demb = self.ops.dropout_backward(dx, acts.get("emb.drop"))  # (B, T, C)
        dwte = self.ops.embedding_backward(demb, acts.idx, cfg.vocab_size)  # (V, C)
        if cfg.tie_weights:
            dwte += dhead  # the head and the lookup share one matrix
        else:
            grads["lm_head.weight"] = dhead
        grads["wpe"] = self.ops.position_backward(demb, cfg.max_seq_len)
        if cfg.lattice_reg > 0 and acts.targets is not None:
            from .lattice.model import gcd_regulariser
            dreg = gcd_regulariser(wte, self.buffers["lattice.laplacian"], cfg.lattice_reg)[1]
            dwte += dreg if scale == 1.0 else scale * dreg
        if cfg.embedding == "lattice":
            from .lattice.model import lattice_embedding_backward
            grads["lattice.proj"], grads["wte"] = lattice_embedding_backward(
                dwte, self.buffers["lattice.features"])
        else:
            grads["wte"] = dwte
        return sink.finish(P)

    def _dlogits(self, acts, dlogits, scale):
        """The gradient at the logits (B, T, V): softmax minus one-hot over the targets (or the
        caller's ``dlogits``), times ``scale``."""
        if dlogits is None:
            if acts.targets is None:
                raise ValueError("backward needs the targets: call forward(idx, targets) first")
            dlogits = self.ops.cross_entropy_backward(acts["probs"], acts.targets, ops.IGNORE_INDEX)  # (B, T, V)
            if scale != 1.0:
                dlogits *= scale
        elif scale != 1.0:
            dlogits = dlogits * scale  # the caller's array is left alone
        return dlogits

    def _block_backward(self, l, dx, acts, sink):
        """Backward of :meth:`block_forward` for block ``l``: ``dx`` (B, T, C) is the gradient of the
        stream leaving the block; fills the block's parameter gradients and returns the gradient of
        the stream entering it."""
        P, n, grads, buf = self.params, block_names(l), sink.grads, sink.buffer
        # --- MLP branch (x_out = x_mid + drop(f)): the sum hands dx to the stream and to the branch
        dx_stream, dbranch = self.ops.residual_backward(dx)
        df = self.ops.dropout_backward(dbranch, acts.get(n.mlp_resid_drop))
        dact, grads[n.proj_w], grads[n.proj_b] = self.ops.linear_backward(
            df, acts[n.act], P[n.proj_w], dw=buf(n.proj_w), db=buf(n.proj_b))  # (B, T, F)
        sink.record(n.act, dact)
        dpre = self.ops.activation_backward(dact, acts[n.pre], self.cfg.activation)  # (B, T, F)
        sink.record(n.pre, dpre)
        dh, grads[n.fc_w], grads[n.fc_b] = self.ops.linear_backward(
            dpre, acts[n.ln_2_out], P[n.fc_w], dw=buf(n.fc_w), db=buf(n.fc_b))  # (B, T, C)
        sink.record(n.ln_2_out, dh)
        dxm, grads[n.ln_2_w], grads[n.ln_2_b] = self.ops.layernorm_backward(
            dh, acts[n.ln_2_in], P[n.ln_2_w], acts[n.ln_2_mean], acts[n.ln_2_rstd])
        dx = dx_stream + dxm  # gradient of the stream after attention
        sink.record(n.ln_2_in, dx)
        # --- attention branch (x_mid = x_in + drop(a))
        dx_stream, dbranch = self.ops.residual_backward(dx)
        da = self.ops.dropout_backward(dbranch, acts.get(n.attn_resid_drop))
        dh = self._attention_branch_backward(l, da, acts, sink)  # (B, T, C)
        sink.record(n.ln_1_out, dh)
        dxi, grads[n.ln_1_w], grads[n.ln_1_b] = self.ops.layernorm_backward(
            dh, acts[n.ln_1_in], P[n.ln_1_w], acts[n.ln_1_mean], acts[n.ln_1_rstd])
        dx = dx_stream + dxi  # gradient of the stream entering block l
        sink.record(n.ln_1_in, dx)
        return dx

    def _attention_branch_backward(self, l, da, acts, sink):
        """Backward of :meth:`_attention_branch`: fills block ``l``'s attention gradients from ``da``
        (B, T, C), the gradient of the branch's output, and returns the gradient of ``h``."""
        P, n, grads, buf = self.params, block_names(l), sink.grads, sink.buffer
        dy, grads[n.c_proj_w], grads[n.c_proj_b] = self.ops.linear_backward(
            da, acts[n.y], P[n.c_proj_w], dw=buf(n.c_proj_w), db=buf(n.c_proj_b))  # (B, T, C)
        sink.record(n.y, dy)
        want_scores = self.cfg.attention_bias == "lattice"
        res = self.ops.attention_backward(dy, acts[n.qkv], acts[n.probs], self.cfg.n_heads,
                                     acts.get(n.attn_drop), return_dscores=want_scores)
        if want_scores:
            dqkv, dscores = res  # dscores (B, H, T, T) is also the gradient of the additive bias
            grads[n.beta] = np.einsum("bhij,bhij->h", dscores, acts["lattice.attn_basis"])  # (H,)
        else:
            dqkv = res  # (B, T, 3C)
        sink.record(n.qkv, dqkv)
        dh, grads[n.c_attn_w], grads[n.c_attn_b] = self.ops.linear_backward(
            dqkv, acts[n.ln_1_out], P[n.c_attn_w], dw=buf(n.c_attn_w), db=buf(n.c_attn_b))  # (B, T, C)
        return dh

    # ------------------------------------------------------------------ convenience
    def loss(self, idx, targets, train=False, rng=None) -> float:
        """The mean cross-entropy of ``targets`` given ``idx``, without keeping the store."""
        return self.forward(idx, targets, train=train, rng=rng)[1]
