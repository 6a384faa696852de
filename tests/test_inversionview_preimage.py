"""ε-preimage scoring against an independent computation on a small HookedTransformer."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from msae_plugin.inversionview.preimage import (
    activations_at,
    min_distances,
    preimage_fraction,
    score_candidates,
)


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4,
                                  d_vocab=10, act_fn="relu", normalization_type="LN")
    return HookedTransformer(cfg).eval()


def test_distances_match_an_independent_computation(model) -> None:
    g = torch.Generator().manual_seed(1)
    query_tokens = torch.randint(1, 10, (1, 6), generator=g)
    cands = torch.randint(1, 10, (20, 6), generator=g)
    cands[3] = query_tokens[0]  # the query's own input is in every preimage
    hook = "blocks.1.hook_resid_mid"
    with torch.no_grad():
        _, cache = model.run_with_cache(query_tokens)
        q = cache[hook][0, 4]
        _, full = model.run_with_cache(cands)  # full forward: independent of stop_at_layer
    scored = score_candidates(model, hook, q, cands, epsilon=0.1)
    ref = ((full[hook] - q).norm(dim=-1) / q.norm()).min(dim=-1)
    by_tokens = {tuple(c.tokens): c for c in scored}
    for i in range(len(cands)):
        c = by_tokens[tuple(cands[i].tolist())]
        assert c.distance == pytest.approx(ref.values[i].item(), abs=1e-5)
    assert scored[0].tokens == query_tokens[0].tolist() and scored[0].distance < 1e-6
    assert scored[0].position == 4 and scored[0].in_preimage
    assert [c.distance for c in scored] == sorted(c.distance for c in scored)
    # precision against the independent distances (not the flags the code under test set)
    assert preimage_fraction(scored) == pytest.approx(float((ref.values <= 0.1).float().mean()))
    assert [c.in_preimage for c in scored] == [c.distance <= 0.1 for c in scored]
    # attention z is flattened over heads
    assert activations_at(model, cands[:2], "blocks.0.attn.hook_z").shape == (2, 6, 16)


def test_padding_never_matches_and_bad_input(model) -> None:
    acts = torch.zeros(1, 3, 4)
    acts[0, 2] = 1.0
    valid = torch.tensor([[True, True, False]])
    d, p = min_distances(acts, torch.ones(4), valid)
    assert d.item() == pytest.approx(1.0) and p.item() == 0
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        score_candidates(model, "blocks.0.hook_resid_post", torch.ones(16), torch.ones(1, 3).long(),
                         epsilon=0)
    with pytest.raises(ValueError, match="Did you mean 'blocks.0.hook_resid_post'"):
        score_candidates(model, "blocks.0.hook_resid_pots", torch.ones(16), torch.ones(1, 3).long())
    with pytest.raises(ValueError, match="query width 5 does not match"):
        score_candidates(model, "blocks.0.hook_resid_post", torch.ones(5), torch.ones(1, 3).long())
    assert score_candidates(model, "blocks.0.hook_resid_post", torch.ones(16),
                            torch.ones(0, 3).long()) == []


def test_mid_sequence_padding_keeps_positions(model) -> None:
    """A decoder may emit PAD mid-sequence: it must stay in the reported tokens (positions keep
    their meaning) and never be the matched position; trailing padding is dropped."""
    PAD = 0
    cand = torch.tensor([[3, 0, 5, 6, 0, 0]])
    with torch.no_grad():
        _, cache = model.run_with_cache(cand)
    q = cache["blocks.0.hook_resid_post"][0, 3]
    (c,) = score_candidates(model, "blocks.0.hook_resid_post", q, cand, pad_id=PAD)
    assert c.tokens == [3, 0, 5, 6] and c.position == 3 and c.distance < 1e-6
    q_pad = cache["blocks.0.hook_resid_post"][0, 1]  # the query is the pad position itself
    (c,) = score_candidates(model, "blocks.0.hook_resid_post", q_pad, cand, pad_id=PAD)
    assert c.position != 1 and c.distance > 1e-3
