"""The paper's comparison of class-level counts on the base and the adapted model (PatchSAE
§4.2.1, Table 1), with the improvement rate Δ.

Groups per class c, from x = a_c^base[s] and y = a_c^adapted[s] (:mod:`counts`): **high** (high
in both), **high-to-low**, **low-to-high**. The paper gives the bounds only as "union top-50 and
top-100"; we implement the reading the research brief argues for (*pooled*): U = the
``upper_rank``-th largest and L = the ``lower_rank``-th largest of the pooled values
{x} ∪ {y}; high: x ≥ U and y ≥ U; high-to-low: x ≥ U and y < L; low-to-high: x < L and y ≥ U.
Latents between the bounds, and low in both, are not counted. ``reading="per_model"`` gives the
other reading (high = in that model's own top ``upper_rank``, low = outside its top
``lower_rank``) as a sensitivity check. Both bounds are parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from msae_plugin.errors import RemappingError


@dataclass
class ClassGroups:
    high: torch.Tensor  # [C] latents per class high in both
    high_to_low: torch.Tensor  # [C]
    low_to_high: torch.Tensor  # [C]
    members: list[dict[str, list[int]]]  # per class: latent ids per group


def _kth_largest(values: torch.Tensor, rank: int) -> float:
    rank = min(rank, len(values))
    return float(values.topk(rank).values[-1])


def latent_groups(base: torch.Tensor, adapted: torch.Tensor, upper_rank: int = 50,
                  lower_rank: int = 100, reading: str = "pooled") -> ClassGroups:
    """Groups per class from ``[C, d_sae]`` class-level counts of the two models."""
    if base.shape != adapted.shape:
        raise RemappingError(f"counts of different shapes {tuple(base.shape)} and "
                             f"{tuple(adapted.shape)}: the same SAE and classes are needed.")
    if not 1 <= upper_rank < lower_rank:
        raise RemappingError(f"need 1 <= upper_rank < lower_rank, got {upper_rank}, {lower_rank}")
    highs, h2ls, l2hs, members = [], [], [], []
    for x, y in zip(base.float(), adapted.float(), strict=True):
        if reading == "pooled":
            pooled = torch.cat([x, y])
            up, low = _kth_largest(pooled, upper_rank), _kth_largest(pooled, lower_rank)
            hx, hy, lx, ly = x >= up, y >= up, x < low, y < low
            # a bound of 0 would make every silent latent "high": high needs a count > 0
            hx, hy = hx & (x > 0), hy & (y > 0)
        elif reading == "per_model":
            rx = torch.argsort(torch.argsort(-x, stable=True))
            ry = torch.argsort(torch.argsort(-y, stable=True))
            hx, hy = (rx < upper_rank) & (x > 0), (ry < upper_rank) & (y > 0)
            lx, ly = rx >= lower_rank, ry >= lower_rank
        else:
            raise RemappingError(f"reading must be 'pooled' or 'per_model', got {reading!r}")
        high, h2l, l2h = hx & hy, hx & ly, lx & hy
        highs.append(int(high.sum()))
        h2ls.append(int(h2l.sum()))
        l2hs.append(int(l2h.sum()))
        members.append({"high": high.nonzero().flatten().tolist(),
                        "high_to_low": h2l.nonzero().flatten().tolist(),
                        "low_to_high": l2h.nonzero().flatten().tolist()})
    return ClassGroups(torch.tensor(highs, dtype=torch.float), torch.tensor(h2ls, dtype=torch.float),
                       torch.tensor(l2hs, dtype=torch.float), members)


def improvement_rate(base_acc: float, adapted_acc: float) -> float:
    """Δ = (adapted − base) / (100 − base), accuracies in % (the paper's Table 1)."""
    if base_acc >= 100:
        return float("nan")
    return (adapted_acc - base_acc) / (100 - base_acc)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson r of two count vectors (the paper's Fig. 20 analogue); NaN if one is constant."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = a.norm() * b.norm()
    return float((a @ b) / den) if den > 0 else float("nan")


def mean_over(values: torch.Tensor, classes: Sequence[int]) -> float:
    return float(values[list(classes)].mean()) if len(classes) else float("nan")
