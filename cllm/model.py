"""The GPT-style model: parameters, initialisation, forward pass (fills the activation store) and
backward pass (from the cross-entropy at the logits back to every parameter).

One block, as in GPT-2 (pre-LayerNorm):

    x = x + c_proj(attention(c_attn(ln_1(x))))
    x = x + mlp_proj(act(mlp_fc(ln_2(x))))

and around the blocks: token + position embeddings below, a final LayerNorm and an output head
(the token embedding, transposed, unless ``tie_weights=False``) above.
"""
from __future__ import annotations

import math

import numpy as np

from . import ops
from .activations import ActivationStore
from .config import ModelConfig


def param_shapes(cfg: ModelConfig) -> dict[str, tuple]:
    """Names and shapes of every parameter, in the model's order (GPT-2 layout, weights (in, out))."""
    V, C, F, L = cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.n_layers
    shapes = {"wte": (V, C), "wpe": (cfg.max_seq_len, C)}
    if cfg.embedding == "lattice":
        shapes["lattice.proj"] = (cfg.lattice_features, C)
    for l in range(L):
        p = f"h.{l}."
        shapes.update({
            p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
            p + "attn.c_attn.weight": (C, 3 * C), p + "attn.c_attn.bias": (3 * C,),
            p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
        })
        if cfg.attention_bias == "lattice":
            shapes[p + "attn.lattice_beta"] = (cfg.n_heads,)
        shapes.update({
            p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
            p + "mlp.c_fc.weight": (C, F), p + "mlp.c_fc.bias": (F,),
            p + "mlp.c_proj.weight": (F, C), p + "mlp.c_proj.bias": (C,),
        })
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

    def __init__(self, cfg: ModelConfig, seed: int = 0, features=None):
        """``features``: with ``cfg.embedding == "lattice"``, a fixed (V, lattice_features) matrix to use as
        F in E = F W + R instead of the prime features of the tokens' codes (clock features, a random
        control, ...). It is kept in ``buffers["lattice.features"]``; the initial parameters do not
        depend on it. Such an F is not part of the config, so a checkpoint could not restore it: the
        trainer refuses to checkpoint a model built with one (``features_given``)."""
        if not isinstance(cfg, ModelConfig):
            raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
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
        x = ops.embedding_forward(idx, wte) + ops.position_forward(T, P["wpe"])  # (B, T, C)
        x, m = ops.dropout_forward(x, p_drop, rng)
        if m is not None:
            acts["emb.drop"] = m

        basis = None
        if cfg.attention_bias == "lattice":
            from .lattice.model import lattice_attention_basis
            basis = lattice_attention_basis(self.buffers["lattice.angles"], self.buffers["lattice.freqs"], idx
                                            ).astype(self.dtype, copy=False)
            acts["lattice.attn_basis"] = basis  # (B, H, T, T)

        for l in range(cfg.n_layers):
            p = f"h.{l}."
            # --- attention branch: x + drop(c_proj(attn(c_attn(ln_1(x)))))
            acts[p + "ln_1.in"] = x
            h, acts[p + "ln_1.mean"], acts[p + "ln_1.rstd"] = ops.layernorm_forward(
                x, P[p + "ln_1.weight"], P[p + "ln_1.bias"])  # (B, T, C)
            acts[p + "ln_1.out"] = h
            a = self._attention_forward(l, h, acts, basis, p_drop, rng)  # (B, T, C)
            a, m = ops.dropout_forward(a, p_drop, rng)
            if m is not None:
                acts[p + "attn.resid_drop"] = m
            x = ops.residual_forward(x, a)  # (B, T, C)
            # --- MLP branch: x + drop(mlp_proj(act(mlp_fc(ln_2(x)))))
            acts[p + "ln_2.in"] = x
            h, acts[p + "ln_2.mean"], acts[p + "ln_2.rstd"] = ops.layernorm_forward(
                x, P[p + "ln_2.weight"], P[p + "ln_2.bias"])
            acts[p + "ln_2.out"] = h
            pre = ops.linear_forward(h, P[p + "mlp.c_fc.weight"], P[p + "mlp.c_fc.bias"])  # (B, T, F)
            acts[p + "mlp.pre"] = pre
            act = ops.activation_forward(pre, cfg.activation)  # (B, T, F)
            acts[p + "mlp.act"] = act
            f = ops.linear_forward(act, P[p + "mlp.c_proj.weight"], P[p + "mlp.c_proj.bias"])  # (B, T, C)
            f, m = ops.dropout_forward(f, p_drop, rng)
            if m is not None:
                acts[p + "mlp.resid_drop"] = m
            x = ops.residual_forward(x, f)

        acts["ln_f.in"] = x
        h, acts["ln_f.mean"], acts["ln_f.rstd"] = ops.layernorm_forward(x, P["ln_f.weight"], P["ln_f.bias"])
        acts["ln_f.out"] = h  # final hidden state (B, T, C)
        head = wte if cfg.tie_weights else P["lm_head.weight"]  # (V, C)
        logits = ops.linear_forward(h, head.T)  # (B, T, C) @ (C, V) -> (B, T, V)
        acts["logits"] = logits
        loss = None
        if targets is not None:
            loss, acts["probs"] = ops.cross_entropy_forward(logits, targets, ops.IGNORE_INDEX)
            if cfg.lattice_reg > 0:  # one objective: what is reported is what is differentiated
                from .lattice.model import gcd_regulariser
                reg, _ = gcd_regulariser(wte, self.buffers["lattice.laplacian"], cfg.lattice_reg)
                loss += reg
            acts.loss = loss
        return logits, loss, acts

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
        record = trace.append if trace is not None else (lambda item: None)
        buf = (lambda name: None) if out is None else out.get
        cfg, P = self.cfg, self.params
        if dlogits is None:
            if acts.targets is None:
                raise ValueError("backward needs the targets: call forward(idx, targets) first")
            dlogits = ops.cross_entropy_backward(acts["probs"], acts.targets, ops.IGNORE_INDEX)  # (B, T, V)
            if scale != 1.0:
                dlogits *= scale
        elif scale != 1.0:
            dlogits = dlogits * scale  # the caller's array is left alone
        record(("logits", dlogits))
        idx = acts.idx
        grads = {}

        wte = self.embedding_matrix()
        head = wte if cfg.tie_weights else P["lm_head.weight"]
        dh, dhead_t, _ = ops.linear_backward(dlogits, acts["ln_f.out"], head.T, has_bias=False)  # dW (C, V)
        dhead = dhead_t.T  # (V, C)
        record(("ln_f.out", dh))
        dx, dlnw, dlnb = ops.layernorm_backward(dh, acts["ln_f.in"], P["ln_f.weight"],
                                                acts["ln_f.mean"], acts["ln_f.rstd"])  # (B, T, C)
        grads["ln_f.weight"], grads["ln_f.bias"] = dlnw, dlnb
        record(("ln_f.in", dx))

        for l in reversed(range(cfg.n_layers)):
            p = f"h.{l}."
            # --- MLP branch (x_out = x_mid + drop(f)): the sum hands dx to the stream and to the branch
            dx_stream, dbranch = ops.residual_backward(dx)
            df = ops.dropout_backward(dbranch, acts.get(p + "mlp.resid_drop"))
            dact, grads[p + "mlp.c_proj.weight"], grads[p + "mlp.c_proj.bias"] = ops.linear_backward(
                df, acts[p + "mlp.act"], P[p + "mlp.c_proj.weight"],
                dw=buf(p + "mlp.c_proj.weight"), db=buf(p + "mlp.c_proj.bias"))  # (B, T, F)
            record((p + "mlp.act", dact))
            dpre = ops.activation_backward(dact, acts[p + "mlp.pre"], cfg.activation)  # (B, T, F)
            record((p + "mlp.pre", dpre))
            dh, grads[p + "mlp.c_fc.weight"], grads[p + "mlp.c_fc.bias"] = ops.linear_backward(
                dpre, acts[p + "ln_2.out"], P[p + "mlp.c_fc.weight"],
                dw=buf(p + "mlp.c_fc.weight"), db=buf(p + "mlp.c_fc.bias"))  # (B, T, C)
            record((p + "ln_2.out", dh))
            dxm, grads[p + "ln_2.weight"], grads[p + "ln_2.bias"] = ops.layernorm_backward(
                dh, acts[p + "ln_2.in"], P[p + "ln_2.weight"], acts[p + "ln_2.mean"], acts[p + "ln_2.rstd"])
            dx = dx_stream + dxm  # gradient of the stream after attention
            record((p + "ln_2.in", dx))
            # --- attention branch (x_mid = x_in + drop(a))
            dx_stream, dbranch = ops.residual_backward(dx)
            da = ops.dropout_backward(dbranch, acts.get(p + "attn.resid_drop"))
            dh = self._attention_backward(l, da, acts, grads, record, buf)  # (B, T, C)
            record((p + "ln_1.out", dh))
            dxi, grads[p + "ln_1.weight"], grads[p + "ln_1.bias"] = ops.layernorm_backward(
                dh, acts[p + "ln_1.in"], P[p + "ln_1.weight"], acts[p + "ln_1.mean"], acts[p + "ln_1.rstd"])
            dx = dx_stream + dxi  # gradient of the stream entering block l
            record((p + "ln_1.in", dx))

        demb = ops.dropout_backward(dx, acts.get("emb.drop"))  # (B, T, C)
        dwte = ops.embedding_backward(demb, idx, cfg.vocab_size)  # (V, C)
        if cfg.tie_weights:
            dwte += dhead  # the head and the lookup share one matrix
        else:
            grads["lm_head.weight"] = dhead
        grads["wpe"] = ops.position_backward(demb, cfg.max_seq_len)
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
        if out is None:
            return {k: grads[k] for k in P}  # same order as the parameters
        for k in P:  # the small tensors (and any computed elsewhere) are copied into the buffers
            if grads[k] is not out[k]:
                np.copyto(out[k], grads[k])
        return out

    # ------------------------------------------------------------------ the attention branch
    def _attention_forward(self, l, h, acts, basis, p_drop, rng):
        """c_proj(attention(c_attn(h))) for block ``l``; ``h`` (B, T, C) is ln_1's output."""
        P, p, H = self.params, f"h.{l}.", self.cfg.n_heads
        qkv = ops.linear_forward(h, P[p + "attn.c_attn.weight"], P[p + "attn.c_attn.bias"])  # (B, T, 3C)
        acts[p + "attn.qkv"] = qkv
        bias = None
        if basis is not None:
            bias = P[p + "attn.lattice_beta"][None, :, None, None] * basis  # (B, H, T, T)
        y, acts[p + "attn.probs"], m = ops.attention_forward(qkv, H, bias, p_drop, rng)  # (B, T, C)
        if m is not None:
            acts[p + "attn.drop"] = m
        acts[p + "attn.y"] = y
        return ops.linear_forward(y, P[p + "attn.c_proj.weight"], P[p + "attn.c_proj.bias"])  # (B, T, C)

    def _attention_backward(self, l, da, acts, grads, record=lambda item: None, buf=lambda name: None):
        """Backward of :meth:`_attention_forward`: fills block ``l``'s attention gradients, returns dh.
        ``buf(name)`` gives a preallocated gradient array to write into, or None."""
        P, p, H = self.params, f"h.{l}.", self.cfg.n_heads
        dy, grads[p + "attn.c_proj.weight"], grads[p + "attn.c_proj.bias"] = ops.linear_backward(
            da, acts[p + "attn.y"], P[p + "attn.c_proj.weight"],
            dw=buf(p + "attn.c_proj.weight"), db=buf(p + "attn.c_proj.bias"))  # (B, T, C)
        record((p + "attn.y", dy))
        want_scores = self.cfg.attention_bias == "lattice"
        out = ops.attention_backward(dy, acts[p + "attn.qkv"], acts[p + "attn.probs"], H,
                                     acts.get(p + "attn.drop"), return_dscores=want_scores)
        if want_scores:
            dqkv, dscores = out  # dscores (B, H, T, T) is also the gradient of the additive bias
            grads[p + "attn.lattice_beta"] = np.einsum("bhij,bhij->h", dscores, acts["lattice.attn_basis"])  # (H,)
        else:
            dqkv = out  # (B, T, 3C)
        record((p + "attn.qkv", dqkv))
        dh, grads[p + "attn.c_attn.weight"], grads[p + "attn.c_attn.bias"] = ops.linear_backward(
            dqkv, acts[p + "ln_1.out"], P[p + "attn.c_attn.weight"],
            dw=buf(p + "attn.c_attn.weight"), db=buf(p + "attn.c_attn.bias"))  # (B, T, C)
        return dh

    # ------------------------------------------------------------------ convenience
    def loss(self, idx, targets, train=False, rng=None) -> float:
        """The mean cross-entropy of ``targets`` given ``idx``, without keeping the store."""
        return self.forward(idx, targets, train=train, rng=rng)[1]
