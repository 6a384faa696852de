"""Nested TopK reconstructions computed from one selection.

A naive MSAE step runs TopK and a decoder matmul per level, and autograd then runs two more
matmuls per level. Here:

* the pre-activations are ranked once (one sorted ``topk``), and only as deep as needed: TopK-ReLU
  keeps only positive values, so every level whose k is at least the largest number of positive
  pre-activations in the batch equals the dense ReLU level and simply reuses it;
* the remaining (sparse) levels are built incrementally — level i adds the decoder rows of the
  latents ranked between k_{i-1} and k_i — in one fused ``embedding_bag`` call over all levels;
* the backward pass (:class:`_NestedSparseDecode`) is written by hand: gradients for the selected
  values come from one sampled matmul over every level at once, and the decoder gradient is one
  matmul per sparse level of its cumulative code against that level's output gradient
  (Σ_i z_iᵀ ∂L/∂x̂_i), instead of autograd's per-call ``embedding_bag`` backward, which is an
  order of magnitude slower on CPU.

The last level (k = d_sae) is the dense ReLU code, decoded with one matmul by the caller.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def topk_relu(
    hidden_pre: torch.Tensor, k: int, rank_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """TopK-ReLU: keep the k largest pre-activations (by signed value), ReLU them, zero the rest.

    With ``rank_scale`` (d_sae,) the k latents are chosen by ``hidden_pre * rank_scale`` (the
    MSAE passes decoder row norms, so latents are ranked by their contribution to the
    reconstruction); the kept values are still the unscaled pre-activations.
    """
    d_sae = hidden_pre.shape[-1]
    if k >= d_sae:
        return F.relu(hidden_pre)
    if rank_scale is None:
        vals, idx = hidden_pre.topk(k, dim=-1, sorted=False)
    else:
        with torch.no_grad():
            idx = (hidden_pre * rank_scale).topk(k, dim=-1, sorted=False).indices
        vals = hidden_pre.gather(-1, idx)
    return torch.zeros_like(hidden_pre).scatter(-1, idx, F.relu(vals))


def _sampled_rows_dot(
    grad_levels: torch.Tensor, W: torch.Tensor, idx: torch.Tensor, seg: list[int]
) -> torch.Tensor:
    """out[b, r] = W[idx[b, r]] · grad_levels[b, level(r)] for every rank r (one SDDMM)."""
    B, K = idx.shape
    n_levels = len(seg)
    seg_t = torch.tensor(seg, device=idx.device)
    crow = torch.zeros(B * n_levels + 1, dtype=torch.long, device=idx.device)
    crow[1:] = seg_t.repeat(B).cumsum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(
            crow,
            idx.reshape(-1),
            torch.zeros(B * K, dtype=W.dtype, device=W.device),
            size=(B * n_levels, W.shape[0]),
        )
        out = torch.sparse.sampled_addmm(
            pattern, grad_levels.reshape(B * n_levels, -1).contiguous(), W.t(), beta=0.0
        )
    return out.values().view(B, K)


class _NestedSparseDecode(torch.autograd.Function):
    """Cumulative decodes of rank segments; output (batch, n_levels, d_in)."""

    @staticmethod
    def forward(
        ctx: Any, vals: torch.Tensor, idx: torch.Tensor, W: torch.Tensor, bounds: list[int]
    ) -> torch.Tensor:
        B, K = idx.shape
        seg = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        offsets = (
            torch.arange(B, device=idx.device)[:, None] * K
            + torch.tensor(bounds[:-1], device=idx.device)[None, :]
        ).reshape(-1)
        inc = F.embedding_bag(
            idx.reshape(-1), W, offsets, per_sample_weights=vals.reshape(-1), mode="sum"
        )
        ctx.save_for_backward(vals, idx, W)
        ctx.bounds = bounds
        ctx.seg = seg
        return inc.view(B, len(seg), -1).cumsum(1)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        vals, idx, W = ctx.saved_tensors
        bounds, seg = ctx.bounds, ctx.seg
        grad_vals = grad_W = None
        if ctx.needs_input_grad[0]:
            # a rank in level l feeds every output from l on: suffix-sum the output gradients
            suffix = grad_out.flip(1).cumsum(1).flip(1)
            grad_vals = _sampled_rows_dot(suffix, W, idx, seg)
        if ctx.needs_input_grad[2]:
            grad_W = torch.zeros_like(W)
            z = torch.zeros(idx.shape[0], W.shape[0], dtype=W.dtype, device=W.device)
            for level, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                z.scatter_(1, idx[:, a:b], vals[:, a:b])  # cumulative code of this level
                grad_W.addmm_(z.t(), grad_out[:, level])
        return grad_vals, None, grad_W, None


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
    dense = dense_acts @ W_dec
    with torch.no_grad():
        n_pos = int((hidden_pre > 0).sum(-1).max().item()) if hidden_pre.numel() else 0
    # levels that can hold every positive latent of every row are the dense level itself
    sparse_ks = [k for k in ladder if k < d_sae and k < n_pos]
    outs: list[torch.Tensor] = []
    if sparse_ks:
        vals, idx = hidden_pre.topk(sparse_ks[-1], dim=-1, sorted=True)
        stacked = _NestedSparseDecode.apply(F.relu(vals), idx, W_dec, [0, *sparse_ks])
        outs.extend(stacked.unbind(1))
    outs.extend(dense for _ in range(len(ladder) - len(outs)))
    return outs
