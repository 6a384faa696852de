"""Reading an activation: sample candidate inputs from the decoder and verify each one against
the probed model (the ε-preimage criterion)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from msae_plugin.errors import InversionViewError
from msae_plugin.inversionview.decoder import InversionViewDecoder
from msae_plugin.inversionview.preimage import (
    DEFAULT_EPSILON,
    ScoredCandidate,
    activations_at,
    check_epsilon,
    check_queries,
    check_query,
    match_positions,
    paired_min_distances,
    score_candidates,
)
from msae_plugin.inversionview.views import render_table  # noqa: F401  (re-export)
from msae_plugin.names import suggest

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
    match_eos: bool = False,
) -> list[ScoredCandidate]:
    """``n`` decoded candidates for ``query`` (taken at ``hook_name``), sorted by distance and
    marked in/out of the ε-preimage. ``hooks`` is the decoder's site list.

    As in the paper, a sample's EOS position is not a candidate match (``match_eos=True``
    allows it, e.g. for a decoder trained on queries at EOS such as CLIP's pooled EOT token).
    Bad requests (``n < 1``, an unknown site, a query that is not one finite, non-zero vector
    of the decoder's width) raise before any sampling."""
    epsilon = check_epsilon(epsilon)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InversionViewError(
            f"n (the number of samples) must be an int ≥ 1, got {n!r}; the paper draws 64 per "
            "query"
        )
    _check_site(hook_name, hooks)
    check_query(query, decoder.cfg.d_act)
    site = list(hooks).index(hook_name)
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
    return score_candidates(probed, hook_name, query, cands, epsilon=epsilon, pad_id=pad,
                            eos_id=None if match_eos else decoder.cfg.eos_id)


def _check_site(hook_name: str, hooks: Sequence[str]) -> None:
    if hook_name not in hooks:
        raise InversionViewError(
            f"this decoder was not trained on {hook_name!r}.{suggest(hook_name, hooks)} It "
            f"knows {list(hooks)}; query one of those or train a decoder on this site"
        )


@torch.no_grad()
def batch_precision(
    decoder: InversionViewDecoder,
    probed,
    hooks: Sequence[str],
    hook_name: str,
    tokens: torch.Tensor,
    positions: torch.Tensor | int,
    temperature: float = 1.0,
    noise: float = 0.0,
    epsilon: float = DEFAULT_EPSILON,
    generator: torch.Generator | None = None,
    return_samples: bool = False,
    match_eos: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each query input ``tokens[i]`` (activation at ``hook_name``, position
    ``positions[i]``), draw one decoded sample and return its distance to the query
    (``[batch]``); ``(result <= epsilon).float().mean()`` is the paper's training-log "ratio".
    Batched over queries, for evaluating a decoder on many held-out activations at once.
    With ``return_samples`` returns ``(distances, samples, queries)``. EOS positions are not
    matches unless ``match_eos`` (see :func:`sample_preimage`)."""
    epsilon = check_epsilon(epsilon)
    _check_site(hook_name, hooks)
    n = len(tokens)
    pos = torch.as_tensor(positions).expand(n)
    queries = activations_at(probed, tokens, hook_name)[torch.arange(n), pos]
    check_queries(queries)  # before sampling: NaN would reach torch.multinomial
    site = torch.full((n,), list(hooks).index(hook_name))
    cands = decoder.sample(queries, site, temperature, noise, generator=generator)
    acts = activations_at(probed, cands, hook_name)
    valid = match_positions(cands, decoder.cfg.pad_id,
                            None if match_eos else decoder.cfg.eos_id)
    dist = paired_min_distances(acts, queries, valid)
    return (dist, cands, queries) if return_samples else dist


@torch.no_grad()
def token_contrast(
    decoder: InversionViewDecoder,
    samples: Sequence[Sequence[int]],
    site: int,
    query: torch.Tensor,
    baseline: torch.Tensor,
) -> list[list[float]]:
    """Per sampled token, ``p(token | prefix, query) − p(token | prefix, baseline)`` (the
    paper's colouring: the conditional minus an "unconditional" decoder, where the baseline is
    the same site's activation at the BOS position, which carries no input information).
    High values mark the tokens the query activation is responsible for. The first token (BOS)
    gets 0."""
    if not samples:
        return []
    width = max(len(s) for s in samples)
    pad = decoder.cfg.pad_id
    tokens = torch.tensor([list(s) + [pad] * (width - len(s)) for s in samples])
    n = len(samples)
    sites = torch.full((n,), site)
    if width < 2:
        return [[0.0] * len(s) for s in samples]
    probs = []
    for act in (query, baseline):
        logits = decoder(tokens[:, :-1], act.expand(n, -1), sites)
        p = torch.softmax(logits.float(), dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
        probs.append(p)
    diff = (probs[0] - probs[1]).tolist()
    return [[0.0] + diff[i][: len(s) - 1] for i, s in enumerate(samples)]
