"""The cllm model written again in PyTorch: an independent reference for parity tests and benchmarks.

Same parameter names, shapes and layout as ``cllm.model.param_shapes(cfg)`` (GPT-2 Conv1D weights
stored (in, out), so a linear layer is ``x @ W + b``), same operations:

    x = wte[idx] + wpe[:T]
    per block (pre-LayerNorm, eps 1e-5):
        x = x + c_proj(causal_attention(c_attn(ln_1(x))))      fused qkv, scores scaled 1/sqrt(hd)
        x = x + mlp.c_proj(act(mlp.c_fc(ln_2(x))))             act: GELU (tanh approximation) or tanh
    logits = ln_f(x) @ wte.T      (or @ lm_head.weight.T with tie_weights=False)
    loss = mean cross-entropy

Only the plain model is covered (embedding="learned", attention_bias="none", dropout 0).

torch is an optional extra of cllm: this file lives outside the package and nothing in ``cllm``
imports it at module level. ``pip install torch==2.13.0`` (the CPU wheel) to use it.

    import cllm, torch
    from torch_reference import TorchGPT, make_torch_adamw
    model = cllm.Model(cfg, seed=0)
    tmodel = TorchGPT.from_cllm(model, dtype=torch.float64)
    loss = tmodel(idx, targets)[1]; loss.backward()
    tmodel.grads()                       # {cllm name: np.ndarray}, same keys as model.backward(acts)
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

LN_EPS = 1e-5


def _default_decay(name: str, shape) -> bool:
    """cllm.optim.default_decay: 2-D parameters except the token and position embeddings."""
    return len(shape) == 2 and name not in ("wte", "wpe")


class TorchGPT(torch.nn.Module):
    """The GPT-style model of ``cllm.model`` in PyTorch, with cllm's parameter names.

    ``self.params`` maps cllm names (``"h.0.attn.c_attn.weight"``) to ``nn.Parameter``; they are also
    registered on the module (dots replaced by underscores, as torch forbids dots in names), so
    ``module.parameters()`` and ``state_dict()`` see them.

    ``attention``: ``"sdpa"`` uses ``F.scaled_dot_product_attention(is_causal=True)`` (torch's fused
    CPU kernel, the fastest standard path); ``"explicit"`` writes softmax(q k^T / sqrt(hd) + mask) v
    out, as cllm does. Both compute the same function.
    """

    def __init__(self, cfg, dtype=torch.float32, attention: str = "sdpa"):
        super().__init__()
        if getattr(cfg, "embedding", "learned") != "learned" or getattr(cfg, "attention_bias", "none") != "none":
            raise ValueError("TorchGPT covers embedding='learned' and attention_bias='none' only")
        if getattr(cfg, "dropout", 0.0) != 0.0:
            raise ValueError("TorchGPT covers dropout=0 only")
        if cfg.activation not in ("gelu", "tanh"):
            raise ValueError(f"unknown activation {cfg.activation!r}")
        if attention not in ("sdpa", "explicit"):
            raise ValueError(f"attention must be 'sdpa' or 'explicit', got {attention!r}")
        self.cfg = cfg
        self.attention = attention
        self.params: dict[str, torch.nn.Parameter] = {}
        from cllm.model import param_shapes  # the single source of names and shapes

        for name, shape in param_shapes(cfg).items():
            p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
            self.params[name] = p
            self.register_parameter(name.replace(".", "_"), p)
        T = cfg.max_seq_len
        self.register_buffer("causal", torch.ones(T, T, dtype=torch.bool).tril(), persistent=False)

    # ------------------------------------------------------------------ construction from cllm
    @classmethod
    def from_cllm(cls, model, dtype=torch.float32, attention: str = "sdpa") -> "TorchGPT":
        """A TorchGPT with a copy of ``model.params`` (a ``cllm.Model``), cast to ``dtype``."""
        tm = cls(model.cfg, dtype=dtype, attention=attention)
        tm.load_cllm_params(model.params)
        return tm

    @torch.no_grad()
    def load_cllm_params(self, params: dict) -> None:
        if set(params) != set(self.params):
            raise ValueError("parameter names differ from the config's")
        for name, value in params.items():
            p = self.params[name]
            v = torch.from_numpy(np.ascontiguousarray(value))
            if tuple(v.shape) != tuple(p.shape):
                raise ValueError(f"{name}: shape {tuple(v.shape)}, expected {tuple(p.shape)}")
            p.copy_(v.to(p.dtype))

    def numpy_params(self) -> dict:
        """Copies of the parameters as numpy arrays, by cllm name."""
        return {k: p.detach().cpu().numpy().copy() for k, p in self.params.items()}

    def grads(self) -> dict:
        """Copies of the ``.grad`` tensors as numpy arrays, by cllm name (zeros where grad is None)."""
        return {k: (p.grad.detach().cpu().numpy().copy() if p.grad is not None
                    else np.zeros(tuple(p.shape), dtype=str(p.dtype).replace("torch.", "")))
                for k, p in self.params.items()}

    # ------------------------------------------------------------------ the model
    @staticmethod
    def _linear(x2, w, b):
        """x2 (N, I) @ w (I, O) + b (O,) -> (N, O): GPT-2's Conv1D, one fused addmm."""
        return torch.addmm(b, x2, w)

    def forward(self, idx, targets=None):
        """idx (B, T) int64 -> (logits (B, T, V), loss or None)."""
        cfg, P = self.cfg, self.params
        B, T = idx.shape
        C, H = cfg.d_model, cfg.n_heads
        hd = C // H
        N = B * T
        x = (P["wte"][idx] + P["wpe"][:T]).reshape(N, C)  # (N, C)
        for l in range(cfg.n_layers):
            p = f"h.{l}."
            h = F.layer_norm(x, (C,), P[p + "ln_1.weight"], P[p + "ln_1.bias"], LN_EPS)  # (N, C)
            qkv = self._linear(h, P[p + "attn.c_attn.weight"], P[p + "attn.c_attn.bias"])  # (N, 3C)
            q, k, v = qkv.view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, hd) each
            if self.attention == "sdpa":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(hd)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))  # (B, H, T, T)
                att = att.masked_fill(~self.causal[:T, :T], float("-inf"))
                y = torch.softmax(att, dim=-1) @ v  # (B, H, T, hd)
            y = y.transpose(1, 2).reshape(N, C)  # heads merged
            x = x + self._linear(y, P[p + "attn.c_proj.weight"], P[p + "attn.c_proj.bias"])
            h = F.layer_norm(x, (C,), P[p + "ln_2.weight"], P[p + "ln_2.bias"], LN_EPS)
            f = self._linear(h, P[p + "mlp.c_fc.weight"], P[p + "mlp.c_fc.bias"])  # (N, F)
            f = F.gelu(f, approximate="tanh") if cfg.activation == "gelu" else torch.tanh(f)
            x = x + self._linear(f, P[p + "mlp.c_proj.weight"], P[p + "mlp.c_proj.bias"])
        h = F.layer_norm(x, (C,), P["ln_f.weight"], P["ln_f.bias"], LN_EPS)
        head = P["wte"] if cfg.tie_weights else P["lm_head.weight"]  # (V, C)
        logits = h @ head.t()  # (N, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits, targets.reshape(N))
        return logits.view(B, T, -1), loss


def decay_groups(tmodel: TorchGPT, weight_decay: float, decay=None) -> list:
    """Two param groups, as cllm's optimizer decides per name: ``decay(name, array)`` (default
    ``cllm.optim.default_decay``: 2-D parameters except wte and wpe) gets ``weight_decay``, the rest 0."""
    rule = (lambda n, p: _default_decay(n, tuple(p.shape))) if decay is None else decay
    yes, no = [], []
    for name, p in tmodel.params.items():
        (yes if rule(name, p.detach().cpu().numpy()) else no).append(p)
    return [{"params": yes, "weight_decay": weight_decay}, {"params": no, "weight_decay": 0.0}]


def make_torch_adamw(tmodel: TorchGPT, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, fused=False,
                     decay=None):
    """``torch.optim.AdamW`` with cllm's AdamW defaults and decay groups.

    ``fused=True`` asks for the fused (single-kernel) implementation, which torch supports on the CPU
    since 2.4 (checked in 2.13.0); if this torch refuses it, the multi-tensor ``foreach`` version is
    used instead and ``opt.cllm_impl`` says so. ``fused=False`` is the plain per-tensor loop
    (``foreach=False``), the one cllm's AdamW follows operation for operation.
    Returns the optimizer; ``opt.cllm_impl`` is "fused", "foreach (fused unavailable: ...)" or "for-loop".
    """
    groups = decay_groups(tmodel, weight_decay, decay)
    hyper = dict(lr=lr, betas=tuple(betas), eps=eps)
    if fused:
        try:
            opt = torch.optim.AdamW(groups, fused=True, **hyper)
            opt.cllm_impl = "fused"
            return opt
        except (RuntimeError, ValueError, TypeError) as e:  # pragma: no cover - depends on the build
            opt = torch.optim.AdamW(decay_groups(tmodel, weight_decay, decay), foreach=True, **hyper)
            opt.cllm_impl = f"foreach (fused unavailable: {str(e).splitlines()[0][:80]})"
            return opt
    opt = torch.optim.AdamW(groups, foreach=False, fused=False, **hyper)
    opt.cllm_impl = "for-loop"
    return opt
