"""Nested TopK reconstructions computed from one selection.

A naive MSAE step runs TopK and a decoder matmul once per level. Here the pre-activations are
ranked once (``topk`` at the largest sparse k, sorted), and each level's reconstruction is the
previous level's plus the decoder rows of the latents ranked between the two ks, gathered with
``embedding_bag`` (a fused gather-multiply-sum). Only ranks with a positive pre-activation
contribute (TopK-ReLU), so once a level holds every positive latent the remaining levels reuse
it for free. The last level (k = d_sae) is the dense ReLU code, decoded with one matmul.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def topk_relu(hidden_pre: torch.Tensor, k: int) -> torch.Tensor:
    """TopK-ReLU: keep the k largest pre-activations (by signed value), ReLU them, zero the rest."""
    d_sae = hidden_pre.shape[-1]
    if k >= d_sae:
        return F.relu(hidden_pre)
    vals, idx = hidden_pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(hidden_pre).scatter(-1, idx, F.relu(vals))


def nested_decodes(
    hidden_pre: torch.Tensor,
    dense_acts: torch.Tensor,
    W_dec: torch.Tensor,
    ladder: Sequence[int],
) -> list[torch.Tensor]:
    """Decoder outputs (no bias) for every level of ``ladder``, sharing one ranking.

    Args:
        hidden_pre: (batch, d_sae) pre-activations.
        dense_acts: (batch, d_sae) ReLU(hidden_pre), the last level's code.
        W_dec: (d_sae, d_in) decoder.
        ladder: strictly increasing ks whose last entry is d_sae.
    """
    d_sae = hidden_pre.shape[-1]
    sparse_ks = [k for k in ladder if k < d_sae]
    outs: list[torch.Tensor] = []
    if sparse_ks:
        vals, idx = hidden_pre.topk(sparse_ks[-1], dim=-1, sorted=True)
        vals = F.relu(vals)
        # positives form a prefix of the sorted values; beyond it every increment is zero
        n_pos = int((vals > 0).sum(-1).max().item()) if vals.numel() else 0
        acc = hidden_pre.new_zeros(hidden_pre.shape[0], W_dec.shape[-1])
        prev = 0
        for k in sparse_ks:
            hi = min(k, n_pos)
            if hi > prev:
                acc = acc + F.embedding_bag(
                    idx[:, prev:hi], W_dec, per_sample_weights=vals[:, prev:hi], mode="sum"
                )
                prev = hi
            outs.append(acc)
    outs.append(dense_acts @ W_dec)
    return outs
