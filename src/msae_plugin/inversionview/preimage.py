"""The ε-preimage criterion of InversionView: is a candidate input among those that produce
(nearly) the query activation?

For a query activation ``q`` taken at hook ``h`` of a probed model, a candidate input ``x`` is in
the ε-preimage when some position ``p`` of ``x`` gives ``‖a_h(x)_p − q‖ / ‖q‖ ≤ ε`` (the paper's
normalised Euclidean distance, minimised over the candidate's positions; ε = 0.1 by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_EPSILON = 0.1


def check_epsilon(epsilon: float) -> float:
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0 (the paper uses 0.1), got {epsilon}")
    return float(epsilon)


def hook_block(hook_name: str) -> int | None:
    """Block index of a TransformerLens ``blocks.{i}.*`` hook name (``None`` for others)."""
    parts = hook_name.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def check_hook(model, hook_name: str) -> None:
    """Raise a ``ValueError`` naming the nearest hook when ``hook_name`` is unknown."""
    if hook_name not in model.hook_dict:
        from msae_plugin.vision.hook_names import suggest

        raise ValueError(
            f"the probed model has no hook {hook_name!r}.{suggest(hook_name, model.hook_dict)}"
        )


@torch.no_grad()
def activations_at(
    model, tokens: torch.Tensor, hook_name: str, batch_size: int = 512
) -> torch.Tensor:
    """``[batch, seq, d]`` activations at ``hook_name`` (heads flattened), running only the
    blocks up to the hook's."""
    check_hook(model, hook_name)
    block = hook_block(hook_name)
    out = []
    for start in range(0, len(tokens), batch_size):
        _, cache = model.run_with_cache(
            tokens[start : start + batch_size], names_filter=[hook_name],
            stop_at_layer=None if block is None else block + 1,
        )
        a = cache[hook_name]
        out.append(a.flatten(2) if a.dim() == 4 else a)
    return torch.cat(out)


def min_distances(
    acts: torch.Tensor, query: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distance, position)`` per candidate: ``min_p ‖acts[:, p] − q‖ / ‖q‖`` over the
    positions marked ``valid`` (all positions by default)."""
    if acts.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"query width {query.shape[-1]} does not match the activation width {acts.shape[-1]}"
        )
    dist = (acts - query).norm(dim=-1) / query.norm().clamp_min(1e-12)
    if valid is not None:
        dist = dist.masked_fill(~valid, float("inf"))
    return dist.min(dim=-1)


@dataclass
class ScoredCandidate:
    """One candidate input with its distance to the query and where the minimum was found."""

    tokens: list[int]
    distance: float
    position: int
    in_preimage: bool


def score_candidates(
    model,
    hook_name: str,
    query: torch.Tensor,
    candidates: torch.Tensor,
    epsilon: float = DEFAULT_EPSILON,
    pad_id: int | None = None,
) -> list[ScoredCandidate]:
    """Run every candidate through the probed model and mark it in/out of the ε-preimage,
    sorted by distance (closest first). Padding positions never count as a match."""
    epsilon = check_epsilon(epsilon)
    if len(candidates) == 0:
        return []
    acts = activations_at(model, candidates, hook_name)
    valid = None if pad_id is None else candidates != pad_id
    dist, pos = min_distances(acts, query.to(acts.dtype), valid)
    order = torch.argsort(dist)
    return [
        ScoredCandidate(
            tokens=[t for t in candidates[i].tolist() if pad_id is None or t != pad_id],
            distance=float(dist[i]),
            position=int(pos[i]),
            in_preimage=bool(dist[i] <= epsilon),
        )
        for i in order.tolist()
    ]


def preimage_fraction(scored: Sequence[ScoredCandidate]) -> float:
    """Fraction of candidates inside the ε-preimage (the paper's precision)."""
    return sum(c.in_preimage for c in scored) / len(scored) if scored else float("nan")
