"""Reading an activation: sample candidate inputs from the decoder and verify each one against
the probed model (the ε-preimage criterion)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from msae_plugin.inversionview.decoder import InversionViewDecoder
from msae_plugin.inversionview.preimage import (
    DEFAULT_EPSILON,
    ScoredCandidate,
    check_epsilon,
    score_candidates,
)

# The paper's plan for its small case studies: (temperature, noise) pairs, each used equally.
DEFAULT_PLAN: tuple[tuple[float, float], ...] = ((0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.1))


def sample_preimage(
    decoder: InversionViewDecoder,
    probed,
    hooks: Sequence[str],
    hook_name: str,
    query: torch.Tensor,
    n: int = 64,
    plan: Sequence[tuple[float, float]] = DEFAULT_PLAN,
    epsilon: float = DEFAULT_EPSILON,
    seed: int = 0,
) -> list[ScoredCandidate]:
    """``n`` decoded candidates for ``query`` (taken at ``hook_name``), sorted by distance and
    marked in/out of the ε-preimage. ``hooks`` is the decoder's site list."""
    epsilon = check_epsilon(epsilon)
    if hook_name not in hooks:
        raise ValueError(
            f"this decoder was not trained on {hook_name!r}; it knows {list(hooks)}"
        )
    if query.dim() != 1 or query.shape[0] != decoder.cfg.d_act:
        raise ValueError(
            f"query must be one activation vector of width {decoder.cfg.d_act}, got shape "
            f"{tuple(query.shape)}"
        )
    site = hooks.index(hook_name)
    g = torch.Generator().manual_seed(seed)
    per = [n // len(plan) + (i < n % len(plan)) for i in range(len(plan))]
    rows = []
    for (temperature, noise), count in zip(plan, per, strict=True):
        if count == 0:
            continue
        act = query.expand(count, -1).clone()
        rows.append(decoder.sample(act, torch.full((count,), site), temperature, noise,
                                   generator=g))
    width = max(r.shape[1] for r in rows)
    pad = decoder.cfg.pad_id
    cands = torch.cat(
        [torch.nn.functional.pad(r, (0, width - r.shape[1]), value=pad) for r in rows]
    )
    return score_candidates(probed, hook_name, query, cands, epsilon=epsilon, pad_id=pad)


def render_table(
    scored: Sequence[ScoredCandidate], decode, query_text: str, query_position: int,
    epsilon: float = DEFAULT_EPSILON, limit: int = 20,
) -> str:
    """A text table of candidates (closest first), the matched position in brackets."""
    lines = [
        f"query: {query_text}  (position {query_position})",
        f"{sum(c.in_preimage for c in scored)}/{len(scored)} samples inside the "
        f"ε={epsilon} preimage",
        f"{'distance':>9}  in?  sample",
    ]
    for c in scored[:limit]:
        toks = [decode([t]) for t in c.tokens]
        if 0 <= c.position < len(toks):
            toks[c.position] = f"[{toks[c.position]}]"
        lines.append(f"{c.distance:9.4f}  {'yes' if c.in_preimage else ' no'}  {''.join(toks)}")
    return "\n".join(lines)
