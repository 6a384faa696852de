"""Which images each card shows: the top-activating ones and graded examples.

Graded examples follow sae_vis's equal-width intervals of ``(0, max]`` of the image score, with
**zeros excluded** (SAEDashboard's lowest bin starts at 0 and fills with non-firing examples);
"contains" is the share of the latent's firing images whose score falls in the interval. The
top interval overlaps the top images, so it skips images already shown among them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Interval:
    lo: float
    hi: float
    contains: float
    images: list[int]


def top_images(score: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, ids)`` ``[d_sae, n]`` of the highest image scores per latent (ties: lower id)."""
    top = score.topk(min(n, score.shape[0]), dim=0)
    return top.values.T.contiguous(), top.indices.T.contiguous()


def graded_examples(
    column: torch.Tensor, shown: torch.Tensor, n_intervals: int = 5, per_interval: int = 4,
    generator: torch.Generator | None = None,
) -> list[Interval]:
    """Intervals for one latent from its image scores ``column`` ``[n_images]``; empty for a
    latent that never fires. Examples are drawn uniformly at random inside each interval."""
    active = (column > 0).nonzero().flatten()
    if len(active) == 0:
        return []
    values = column[active]
    hi = float(values.max())
    edges = torch.linspace(0, hi, n_intervals + 1)
    which = torch.bucketize(values, edges[1:-1], right=True)  # 0..n_intervals-1
    out = []
    for b in range(n_intervals):
        members = active[which == b]
        pool = members[~torch.isin(members, shown)]
        chosen: list[int] = []
        if len(pool):
            pick = pool[torch.randperm(len(pool), generator=generator)[:per_interval]]
            chosen = pick[column[pick].argsort(descending=True)].tolist()
        out.append(Interval(float(edges[b]), float(edges[b + 1]), len(members) / len(active),
                            chosen))
    return out
