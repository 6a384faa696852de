"""Nested TopK reconstructions computed from one selection.

A naive MSAE step runs TopK and a decoder matmul per level, and autograd then runs two more
matmuls per level. Here the dense ReLU level (k = d_sae) is one matmul, and every sparse level is
derived from it and from a few sparse "segment" sums:

* the pre-activations are ranked once (one sorted ``topk``), and only as deep as needed: TopK-ReLU
  keeps only positive values, so a level whose k is at least a row's number of positive
  pre-activations equals the dense level *for that row*, and only the positive entries of a row
  are ever touched (after a little training a row has a few hundred positives out of thousands);
* the ranks of a row are cut into segments at the ladder's ks; level l is the sum of the segments
  up to l (the "head"), or equivalently the dense output minus the segments after l (the
  "tail"). Each row skips its largest segment: levels below it are read as heads, levels from it
  on as tails, so the largest segment (for a doubling ladder, about half of a row's positives) is
  never gathered;
* the segment sums are one ``embedding_bag`` over all rows and segments, and its backward
  (:class:`_SegmentSums`) is written by hand: gradients of the kept values come from one sampled
  matmul (``torch.sparse.sampled_addmm``), and the decoder gradient from one weighted
  ``embedding_bag`` over the entries sorted by latent. The tails' share of the gradient flows
  through the dense level's own matmul, so no level costs a dense matmul of its own.

Reading a level as a tail subtracts in floating point (dense − tail); the error is rounding of the
dense output's size, which the tests bound against the per-level reference.
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


class _SegmentSums(torch.autograd.Function):
    """``out[bag] = Σ_e v[e]·W[idx[e]]`` over the entries of each bag (entries ordered by bag).

    Forward is one weighted ``embedding_bag``. Backward by hand, because autograd's
    ``embedding_bag`` backward with per-sample weights is an order of magnitude slower on CPU:
    ``∂v[e] = W[idx[e]]·∂out[bag[e]]`` as one sampled matmul over the CSR pattern (bags × latents)
    of the entries, and ``∂W[i] = Σ_{e: idx[e]=i} v[e]·∂out[bag[e]]`` as one weighted
    ``embedding_bag`` over ∂out with the entries sorted by latent (a stable sort of small
    integers).
    """

    @staticmethod
    def forward(
        ctx: Any, v: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor, W: torch.Tensor
    ) -> torch.Tensor:
        out = F.embedding_bag(idx, W, offsets[:-1], per_sample_weights=v, mode="sum")
        ctx.save_for_backward(v, idx, offsets, W)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        v, idx, offsets, W = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_v = grad_W = None
        if ctx.needs_input_grad[0]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                pattern = torch.sparse_csr_tensor(
                    offsets, idx, torch.zeros_like(v), size=(grad_out.shape[0], W.shape[0])
                )
                grad_v = torch.sparse.sampled_addmm(pattern, grad_out, W.t(), beta=0.0).values()
        if ctx.needs_input_grad[3]:
            d_sae = W.shape[0]
            key = idx.to(torch.int16 if d_sae <= 2**15 else torch.int32)
            order = torch.sort(key, stable=True).indices
            counts = torch.bincount(idx, minlength=d_sae)
            starts = counts.cumsum(0) - counts
            bags = torch.repeat_interleave(
                torch.arange(grad_out.shape[0], device=idx.device), offsets.diff()
            )
            grad_W = F.embedding_bag(
                bags.index_select(0, order), grad_out, starts,
                per_sample_weights=v.index_select(0, order), mode="sum",
            )
        return grad_v, None, None, grad_W


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
        n_pos = (hidden_pre > 0).sum(-1)
        n_max = int(n_pos.max()) if hidden_pre.numel() else 0
    # levels that can hold every positive latent of every row are the dense level itself
    sparse_ks = [k for k in ladder if k < d_sae and k < n_max]
    if not sparse_ks:
        return [dense for _ in ladder]
    m = len(sparse_ks)
    B = hidden_pre.shape[0]
    device = hidden_pre.device
    with torch.no_grad():
        # segment j < m holds ranks [k_{j-1}, k_j); segment m the positives beyond k_{m-1}
        ends = torch.tensor(sparse_ks, device=device)
        starts = torch.cat([ends.new_zeros(1), ends])
        seg_end = torch.cat([ends.expand(B, m), n_pos[:, None]], 1).minimum(n_pos[:, None])
        sizes = (seg_end - starts).clamp_min(0)
        skip = sizes.argmax(1)  # the segment this row never gathers
        # rows that skip the last segment need ranks only up to k_{m-1}
        depth_row = torch.where(skip == m, n_pos.clamp_max(sparse_ks[-1]), n_pos)
        depth = int(depth_row.max())
    # depth >= 1: a row with more than k_0 positives exists, and its depth is at least k_0
    vals, idx = hidden_pre.topk(depth, dim=-1, sorted=True)
    with torch.no_grad():
        rank = torch.arange(depth, device=device)
        seg_of_rank = torch.bucketize(rank, ends, right=True)  # 0..m
        keep = (rank < n_pos[:, None]) & (seg_of_rank != skip[:, None])
        # one nonzero; the kept entries are ordered by (row, segment) = by bag
        flat = keep.view(-1).nonzero().squeeze(1)
        counts = sizes.masked_fill(torch.arange(m + 1, device=device)[None, :] == skip[:, None], 0)
        offsets = torch.cat([counts.new_zeros(1), counts.view(-1).cumsum(0)])
        idx_kept = idx.reshape(-1).index_select(0, flat)
    v_kept = vals.reshape(-1).index_select(0, flat)
    sums = _SegmentSums.apply(v_kept, idx_kept, offsets, W_dec).view(B, m + 1, -1)
    front = sums[:, :m].cumsum(1)
    total = sums.sum(1)
    # level l: head Σ_{j≤l} when l < skip, else tail dense − Σ_{j>l} = front_l + (dense − total)
    tail = (torch.arange(m, device=device)[None, :] >= skip[:, None]).to(dense.dtype)
    stacked = front + tail[:, :, None] * (dense - total)[:, None, :]
    outs = list(stacked.unbind(1))
    outs.extend(dense for _ in range(len(ladder) - m))
    return outs
