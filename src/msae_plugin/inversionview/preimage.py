"""The ε-preimage criterion of InversionView: is a candidate input among those that produce
(nearly) the query activation?

For a query activation ``q`` taken at hook ``h`` of a probed model, a candidate input ``x`` is in
the ε-preimage when some position ``p`` of ``x`` gives ``‖a_h(x)_p − q‖ / ‖q‖ ≤ ε`` (the paper's
normalised Euclidean distance, minimised over the candidate's positions; ε = 0.1 by default).
As in the paper's code, padding and EOS positions never count as the match (BOS does): the
decoder is trained on queries at ordinary positions, and an EOS activation matching would say
nothing about the tokens the query encodes.

The distance divides by ``‖q‖``, so it is undefined for an all-zero query; such a query (and a
NaN/inf one) is refused with a :class:`~msae_plugin.errors.QueryActivationError` instead of
returning distances of ~1e12 or sampling from NaN probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from msae_plugin.errors import QueryActivationError
from msae_plugin.names import suggest

DEFAULT_EPSILON = 0.1


def check_epsilon(epsilon: float) -> float:
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0 (the paper uses 0.1), got {epsilon}")
    return float(epsilon)


def hook_block(hook_name: str) -> int | None:
    """Block index of a TransformerLens ``blocks.{i}.*`` hook name, also under a CLIP model's
    ``text.`` prefix (``None`` for others: the whole model then runs)."""
    parts = hook_name.split(".")
    if parts[0] == "text":  # HookedOpenCLIP text-tower hooks: text.blocks.{i}.*
        parts = parts[1:]
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def split_site(model, site: str) -> tuple[str, int | None]:
    """``(hook_name, head)`` for a *site*: a hook name, or a per-head hook with the head as a
    suffix (``blocks.0.attn.hook_result.2``, the paper's per-head sites). Raises a
    ``ValueError`` naming the nearest hook when the site does not exist."""
    if site in model.hook_dict:
        return site, None
    base, _, last = site.rpartition(".")
    if last.isdigit() and base in model.hook_dict and ".attn.hook_" in base:
        head = int(last)
        n_heads = getattr(getattr(model, "cfg", None), "n_heads", None)
        if base.startswith("text."):  # a CLIP text tower may have another head count
            n_heads = None
        if n_heads is not None and not 0 <= head < n_heads:
            raise ValueError(
                f"site {site!r} names head {head}, but the probed model has {n_heads} heads "
                f"(0..{n_heads - 1})"
            )
        if base.endswith("attn.hook_result") and not getattr(model.cfg, "use_attn_result", True):
            raise ValueError(
                f"site {site!r} needs per-head outputs: call model.set_use_attn_result(True) on "
                "the probed model first (TransformerLens only fills attn.hook_result then)"
            )
        return base, head
    raise ValueError(f"the probed model has no hook {site!r}.{suggest(site, model.hook_dict)}")


def check_hook(model, hook_name: str) -> None:
    """Raise a ``ValueError`` naming the nearest hook when ``hook_name`` is not a site of
    ``model`` (see :func:`split_site`)."""
    split_site(model, hook_name)


def select_site(acts: torch.Tensor, head: int | None) -> torch.Tensor:
    """``[batch, seq, d]`` from a cached hook value: one head's slice for per-head sites, heads
    flattened for other per-head hooks."""
    if head is not None:
        if acts.dim() != 4 or not 0 <= head < acts.shape[2]:
            raise ValueError(
                f"head {head} does not exist at this hook (activation shape "
                f"{tuple(acts.shape)}, heads on axis 2)"
            )
        return acts[:, :, head]
    return acts.flatten(2) if acts.dim() == 4 else acts


@torch.no_grad()
def activations_at(
    model, tokens: torch.Tensor, hook_name: str, batch_size: int = 512
) -> torch.Tensor:
    """``[batch, seq, d]`` activations at site ``hook_name`` (heads flattened unless the site
    names one head), running only the blocks up to the hook's."""
    hook, head = split_site(model, hook_name)
    block = hook_block(hook)
    out = []
    for start in range(0, len(tokens), batch_size):
        _, cache = model.run_with_cache(
            tokens[start : start + batch_size], names_filter=[hook],
            stop_at_layer=None if block is None else block + 1,
        )
        out.append(select_site(cache[hook], head))
    return torch.cat(out)


def check_query(query: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Return ``query`` if it is one finite, non-zero activation vector (of ``width`` when
    given); raise a :class:`QueryActivationError` that says what to do otherwise."""
    if not torch.is_tensor(query) or query.dim() != 1:
        shape = tuple(query.shape) if torch.is_tensor(query) else type(query).__name__
        raise QueryActivationError(
            f"the query must be one 1-D activation vector, got {shape}; take a single "
            "position's activation, e.g. acts[0, position]"
        )
    if width is not None and query.shape[0] != width:
        raise QueryActivationError(
            f"query width {query.shape[0]} does not match the activation width {width}: the "
            "query must come from the same site of the same probed model"
        )
    check_queries(query[None], "the query")
    return query


def check_queries(queries: torch.Tensor, what: str = "a query") -> None:
    """Refuse NaN/inf entries and all-zero rows of ``queries`` (``[n, d]``): NaN would reach
    the decoder's sampler as NaN probabilities, and a zero query has no normalised distance."""
    bad = ~torch.isfinite(queries).all(dim=-1)
    if bool(bad.any()):
        where = "" if len(queries) == 1 else f" (row {int(bad.nonzero()[0])})"
        raise QueryActivationError(
            f"{what}{where} contains NaN or inf, so no input can be compared with it; check "
            "the probed model and the saved activation (e.g. torch.isfinite(q).all())"
        )
    zero = queries.norm(dim=-1) == 0
    if bool(zero.any()):
        where = "" if len(queries) == 1 else f" (row {int(zero.nonzero()[0])})"
        raise QueryActivationError(
            f"{what}{where} is all zeros: InversionView's distance ‖a − q‖ / ‖q‖ divides by the "
            "query's norm and is undefined for q = 0; query another site or position (one "
            "whose activation is not identically zero)"
        )


def min_distances(
    acts: torch.Tensor, query: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distance, position)`` per candidate: ``min_p ‖acts[:, p] − q‖ / ‖q‖`` over the
    positions marked ``valid`` (all positions by default)."""
    check_query(query, acts.shape[-1])
    dist = (acts - query).norm(dim=-1) / query.norm()
    if valid is not None:
        dist = dist.masked_fill(~valid, float("inf"))
    return dist.min(dim=-1)


def paired_min_distances(
    acts: torch.Tensor, queries: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``[n]``: for each candidate ``i``, ``min_p ‖acts[i, p] − queries[i]‖ / ‖queries[i]‖`` over
    its ``valid`` positions (one query per candidate, as when evaluating many queries at once)."""
    check_queries(queries, "a query")
    dist = (acts - queries[:, None]).norm(dim=-1) / queries.norm(dim=-1, keepdim=True)
    if valid is not None:
        dist = dist.masked_fill(~valid, float("inf"))
    return dist.min(dim=-1).values


def match_positions(
    tokens: torch.Tensor, pad_id: int | None, eos_id: int | None = None
) -> torch.Tensor | None:
    """Positions allowed to be a candidate's match: every one but padding and EOS (the paper
    excludes both from the minimum; BOS stays). ``None`` (all) when neither id is given."""
    valid = None
    for special in (pad_id, eos_id):
        if special is not None:
            keep = tokens != special
            valid = keep if valid is None else valid & keep
    return valid


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
    eos_id: int | None = None,
) -> list[ScoredCandidate]:
    """Run every candidate through the probed model and mark it in/out of the ε-preimage,
    sorted by distance (closest first). Padding and (given ``eos_id``) EOS positions never
    count as a match, as in the paper."""
    epsilon = check_epsilon(epsilon)
    check_query(query)
    if len(candidates) == 0:
        return []
    acts = activations_at(model, candidates, hook_name)
    valid = match_positions(candidates, pad_id, eos_id)
    dist, pos = min_distances(acts, query.to(acts.dtype), valid)
    order = torch.argsort(dist)
    return [
        ScoredCandidate(
            tokens=_strip_trailing(candidates[i].tolist(), pad_id),
            distance=float(dist[i]),
            position=int(pos[i]),
            in_preimage=bool(dist[i] <= epsilon),
        )
        for i in order.tolist()
    ]


def _strip_trailing(tokens: list[int], pad_id: int | None) -> list[int]:
    """Drop the padding *after* a sequence; a pad the decoder put mid-sequence stays, so that
    positions keep their meaning."""
    if pad_id is not None:
        while tokens and tokens[-1] == pad_id:
            tokens.pop()
    return tokens


def preimage_fraction(scored: Sequence[ScoredCandidate]) -> float:
    """Fraction of candidates inside the ε-preimage (the paper's precision)."""
    return sum(c.in_preimage for c in scored) / len(scored) if scored else float("nan")
