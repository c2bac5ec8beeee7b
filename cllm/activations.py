"""The activation store: every tensor the backward pass needs, saved by the forward pass, by name.

The earlier C attempt had no such store, so its backward pass could not follow the forward pass it
was meant to differentiate. Here the forward pass writes one named buffer per saved quantity per
layer, the backward pass reads exactly those, and the store can say how much memory each one takes.

Buffer names (l is the layer index; shapes for batch B, sequence T):

====================  ================  ===================================================
name                  shape             why the backward pass needs it
====================  ================  ===================================================
h.l.ln_1.in           (B, T, C)         residual stream entering block l (LayerNorm input)
h.l.ln_1.mean/rstd    (B, T)            LayerNorm statistics
h.l.ln_1.out          (B, T, C)         input of the QKV projection (for its weight gradient)
h.l.attn.qkv          (B, T, 3C)        queries, keys, values
h.l.attn.probs        (B, H, T, T)      attention probabilities (softmax backward)
h.l.attn.y            (B, T, C)         heads merged, input of the output projection
h.l.ln_2.in           (B, T, C)         residual stream after attention
h.l.ln_2.mean/rstd    (B, T)
h.l.ln_2.out          (B, T, C)         input of the MLP's first linear layer
h.l.mlp.pre           (B, T, F)         pre-activation (activation backward)
h.l.mlp.act           (B, T, F)         activation (weight gradient of the MLP projection)
ln_f.in               (B, T, C)         residual stream leaving the last block
ln_f.mean/rstd        (B, T)
ln_f.out              (B, T, C)         final hidden state (weight gradient of the head)
logits                (B, T, V)
probs                 (B, T, V)         softmax of the logits (cross-entropy backward)
====================  ================  ===================================================

With dropout on, the masks are saved too: ``emb.drop`` (B, T, C), and per layer ``h.l.attn.drop``
(B, H, T, T), ``h.l.attn.resid_drop`` and ``h.l.mlp.resid_drop`` (B, T, C). With lattice attention
the bias basis ``lattice.attn_basis`` (B, H, T, T) is saved once for all layers.
"""
from __future__ import annotations

import numpy as np


class ActivationStore:
    """Named buffers written by ``Model.forward`` and read by ``Model.backward``.

    Attributes beyond the buffers: ``idx`` and ``targets`` (the token ids), ``loss`` (a float or None),
    ``train`` (whether dropout was active). ``order`` lists the buffer names in the order the forward
    pass wrote them, which is the order a step-through walks.
    """

    def __init__(self, idx, targets=None, train=False):
        self.buffers: dict[str, np.ndarray] = {}
        self.idx = idx
        self.targets = targets
        self.train = train
        self.loss = None

    def __setitem__(self, name, value):
        self.buffers[name] = value

    def __getitem__(self, name):
        return self.buffers[name]

    def __contains__(self, name):
        return name in self.buffers

    def get(self, name, default=None):
        return self.buffers.get(name, default)

    @property
    def order(self):
        return list(self.buffers)

    def nbytes(self) -> int:
        """Total bytes held by the float buffers (token ids not counted)."""
        return int(sum(a.nbytes for a in self.buffers.values() if a is not None))

    def rows(self):
        """(name, shape, dtype, bytes) for every buffer, in forward order."""
        return [(k, tuple(a.shape), str(a.dtype), int(a.nbytes)) for k, a in self.buffers.items()]

    def table(self, group_layers=False) -> str:
        """A plain-text table of the buffers and their sizes.

        With ``group_layers`` the per-layer buffers are shown once, for layer 0, with a ``x L`` count.
        """
        rows = self.rows()
        if group_layers:
            n_layers = len({k.split(".")[1] for k, *_ in rows if k.startswith("h.")})
            rows = [(k.replace("h.0.", "h.*."), s, d, b * n_layers if k.startswith("h.0.") else b)
                    for k, s, d, b in rows if not k.startswith("h.") or k.startswith("h.0.")]
        width = max(len(r[0]) for r in rows)
        lines = [f"{'buffer':<{width}}  {'shape':<18} {'dtype':<8} {'bytes':>12}"]
        for name, shape, dtype, nbytes in rows:
            lines.append(f"{name:<{width}}  {str(shape):<18} {dtype:<8} {nbytes:>12,}")
        total = self.nbytes()
        lines.append(f"{'total':<{width}}  {'':<18} {'':<8} {total:>12,}  ({total / 1e6:.2f} MB)")
        return "\n".join(lines)


def activation_bytes(B, T, C, H, L, V, d_ff, itemsize=4, dropout=False, lattice_attention=False) -> int:
    """Closed-form size of the activation store, in bytes, from the model's sizes.

    Per layer: two LayerNorms (input, output, mean, rstd: 2 BTC + 2 BT each), qkv (3 BTC), attention
    probabilities (B H T^2), merged attention output (BTC), MLP pre-activation and activation (2 BTF):
    BT (8C + 4 + 2F) + B H T^2. After the blocks: the final LayerNorm (2 BTC + 2 BT), logits and
    probabilities (2 BTV). Dropout adds its masks (BTC for the embeddings, per layer B H T^2 + 2 BTC);
    lattice attention adds its bias basis (B H T^2) once.
    """
    N = B * T
    per_layer = N * (8 * C + 4 + 2 * d_ff) + B * H * T * T
    floats = L * per_layer + N * (2 * C + 2) + 2 * N * V
    if dropout:
        floats += N * C + L * (B * H * T * T + 2 * N * C)
    if lattice_attention:
        floats += B * H * T * T
    return floats * itemsize
