"""Nearest latents of every latent, by decoder cosine and by co-activation, in chunks so that
d_sae = 16k needs O(chunk x d_sae) memory, not a d_sae x d_sae matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _top_excluding_self(sim: torch.Tensor, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(len(sim))
    sim[rows, rows + start] = -float("inf")
    top = sim.topk(min(n, sim.shape[1] - 1), dim=1)
    return top.values, top.indices


@torch.no_grad()
def decoder_neighbours(directions: torch.Tensor, n: int = 10,
                       chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cosines, ids)`` ``[d_sae, n]``: the latents whose decoder directions (rows of
    ``directions``, any scale) are closest by cosine, self excluded."""
    d = F.normalize(directions.float(), dim=-1)
    vals, ids = [], []
    for i in range(0, len(d), chunk):
        v, j = _top_excluding_self(d[i:i + chunk] @ d.T, i, n)
        vals.append(v)
        ids.append(j)
    return torch.cat(vals), torch.cat(ids)


@torch.no_grad()
def coactivation_neighbours(scores: torch.Tensor, n: int = 10,
                            chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, ids)`` ``[d_sae, n]``: Pearson correlation over images of the latents' image
    scores ``scores`` ``[n_images, d_sae]``, self excluded. A latent that never varies (dead)
    has no correlation: its row and column are NaN and rank last."""
    x = scores.float() - scores.float().mean(0)
    norm = x.norm(dim=0)
    x = x / norm.clamp(min=1e-12)
    constant = norm <= 1e-12
    vals, ids = [], []
    for i in range(0, x.shape[1], chunk):
        r = x[:, i:i + chunk].T @ x
        r[:, constant] = -float("inf")
        r[constant[i:i + chunk]] = -float("inf")
        v, j = _top_excluding_self(r, i, n)
        vals.append(v)
        ids.append(j)
    v = torch.cat(vals)
    return torch.where(torch.isfinite(v), v, torch.nan), torch.cat(ids)
