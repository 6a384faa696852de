"""End to end on a small probed HookedTransformer: train a decoder on two hooks with fresh
pairs, sample candidates for held-out queries, verify them; decoded samples land in the
ε-preimage far more often than random inputs from the same distribution."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from msae_plugin.inversionview.decoder import DecoderConfig, InversionViewDecoder
from msae_plugin.inversionview.preimage import preimage_fraction, score_candidates
from msae_plugin.inversionview.sampling import render_table, sample_preimage
from msae_plugin.inversionview.training import PairGenerator, train_decoder

PAD, BOS, EOS, V, L = 0, 1, 2, 8, 4  # inputs: BOS d d d d EOS with digits 3..7
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_attn_out"]
pytestmark = pytest.mark.slow


def sample_inputs(n: int, g: torch.Generator) -> torch.Tensor:
    body = torch.randint(3, V, (n, L), generator=g)
    return torch.cat([torch.full((n, 1), BOS), body, torch.full((n, 1), EOS)], dim=1)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    probed = HookedTransformer(HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=L + 2, d_head=4, n_heads=4, d_vocab=V, act_fn="relu",
        normalization_type="LN")).eval()
    dec = InversionViewDecoder(DecoderConfig(
        vocab_size=V, n_ctx=L + 2, d_act=16, n_sites=len(HOOKS), pad_id=PAD, bos_id=BOS,
        eos_id=EOS, d_model=64, n_layers=2, n_heads=4, n_act_blocks=2))
    pairs = PairGenerator(probed, HOOKS, sample_inputs, special_ids=[PAD, BOS, EOS], bos_id=BOS)
    losses = train_decoder(dec, pairs, steps=400, batch_size=128, lr=2e-3, progress=False)
    return probed, dec, losses


def test_pairs_are_activations_of_their_inputs(trained) -> None:
    probed, _, _ = trained
    pairs = PairGenerator(probed, HOOKS, sample_inputs, special_ids=[PAD, BOS, EOS], bos_id=BOS,
                          p_bos=0.0, seed=5)
    b = pairs(32)
    with torch.no_grad():
        _, cache = probed.run_with_cache(b.tokens)
    ref = cache[HOOKS[int(b.sites[0])]][torch.arange(32), b.positions]
    assert torch.allclose(b.acts, ref, atol=1e-5)
    assert ((b.positions >= 1) & (b.positions <= L)).all()  # never BOS/EOS with p_bos=0


def test_decoder_reads_activations_far_above_baseline(trained) -> None:
    probed, dec, losses = trained
    assert losses[-1] < 0.6 * losses[0]
    g = torch.Generator().manual_seed(99)
    queries = sample_inputs(6, g)
    dec_frac, base_frac = [], []
    for i, hook in enumerate(HOOKS):
        with torch.no_grad():
            _, cache = probed.run_with_cache(queries)
        for j in range(3):
            q = cache[hook][j, j + 1]  # digit positions 1..3: 5, 25, 125 possible prefixes
            scored = sample_preimage(dec, probed, HOOKS, hook, q, n=32, seed=j)
            dec_frac.append(preimage_fraction(scored))
            rand = sample_inputs(32, torch.Generator().manual_seed(1000 + j))
            base_frac.append(preimage_fraction(score_candidates(probed, hook, q, rand, pad_id=PAD)))
            if i == 0 and j == 0:
                table = render_table(scored, lambda t: str(t[0]), "query", 1)
                assert "samples inside the ε=0.1 preimage" in table
    dec_mean = sum(dec_frac) / len(dec_frac)
    base_mean = sum(base_frac) / len(base_frac)
    print(f"decoded in-preimage {dec_mean:.3f} vs random inputs {base_mean:.3f}")
    assert dec_mean > base_mean + 0.3, (dec_frac, base_frac)


def test_sampling_bad_input(trained) -> None:
    probed, dec, _ = trained
    with pytest.raises(ValueError, match="not trained on 'blocks.1.hook_resid_post'"):
        sample_preimage(dec, probed, HOOKS, "blocks.1.hook_resid_post", torch.ones(16))
    with pytest.raises(ValueError, match="width 16"):
        sample_preimage(dec, probed, HOOKS, HOOKS[0], torch.ones(15))
    with pytest.raises(ValueError, match="epsilon"):
        sample_preimage(dec, probed, HOOKS, HOOKS[0], torch.ones(16), epsilon=-1)
    with pytest.raises(ValueError, match="Did you mean"):
        PairGenerator(probed, ["blocks.0.hook_resid_pots"], sample_inputs, [PAD], BOS)
