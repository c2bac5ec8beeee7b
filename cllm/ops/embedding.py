"""Token embedding lookup and learned position embedding."""
import numpy as np


def embedding_forward(idx, table):
    """Look up rows of ``table`` (V, C) for integer ids ``idx`` (B, T) -> (B, T, C)."""
    return table[idx]  # (B, T) -> (B, T, C)


def embedding_backward(dout, idx, vocab_size):
    """Scatter-add ``dout`` (B, T, C) into a (V, C) gradient; a token that repeats accumulates."""
    C = dout.shape[-1]
    dtable = np.zeros((vocab_size, C), dtype=dout.dtype)  # (V, C)
    np.add.at(dtable, idx.reshape(-1), dout.reshape(-1, C))  # unbuffered: repeated ids add up
    return dtable


def position_forward(T, table):
    """Rows 0..T-1 of the position table (max_seq_len, C) -> (T, C); added to every sequence."""
    return table[:T]  # (T, C)


def position_backward(dout, max_seq_len):
    """Gradient of the position table: ``dout`` (B, T, C) summed over the batch into (max_seq_len, C)."""
    B, T, C = dout.shape
    dtable = np.zeros((max_seq_len, C), dtype=dout.dtype)
    dtable[:T] = dout.sum(axis=0)  # (B, T, C) -> (T, C)
    return dtable
