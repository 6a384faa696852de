"""InversionView on the hooked OpenCLIP *text tower* (the embedded msae-tiny-clip): pairs from
captions, a short real training run, and preimage distances against a full forward."""

from __future__ import annotations

import pytest
import torch

from msae_plugin.inversionview.decoder import DecoderConfig, InversionViewDecoder
from msae_plugin.inversionview.preimage import score_candidates
from msae_plugin.inversionview.sampling import batch_precision, sample_preimage
from msae_plugin.inversionview.training import PairGenerator, train_decoder

SITE = "text.blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def setup():
    from msae_plugin.embedded.dataset import make_digit_scenes
    from msae_plugin.vision import HookedOpenCLIP

    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip")
    tok = model.tokenizer
    captions = make_digit_scenes(600, split="train", seed=0).captions
    tokens = model.to_tokens(captions)
    train_t, test_t = tokens[:500], tokens[500:]

    def sample_inputs(n: int, g: torch.Generator) -> torch.Tensor:
        return train_t[torch.randint(len(train_t), (n,), generator=g)]

    torch.manual_seed(0)
    dec = InversionViewDecoder(DecoderConfig(
        vocab_size=tok.vocab_size, n_ctx=tokens.shape[1], d_act=model.cfg.text_d_model,
        n_sites=1, pad_id=tok.pad_id, bos_id=tok.sot_token_id, eos_id=tok.eot_token_id,
        d_model=64, n_layers=2, n_heads=4, n_act_blocks=2))
    pairs = PairGenerator(model, [SITE], sample_inputs,
                          [tok.pad_id, tok.sot_token_id, tok.eot_token_id],
                          bos_id=tok.sot_token_id)
    losses = train_decoder(dec, pairs, steps=150, batch_size=64, lr=3e-3, progress=False,
                           log_every=10)
    return model, dec, losses, test_t


def test_decoder_trains_on_text_tower_activations(setup) -> None:
    model, dec, losses, test_t = setup
    assert losses[-1] < 0.5 * losses[0], losses


def test_text_tower_distances_match_a_full_forward(setup) -> None:
    model, dec, _, test_t = setup
    queries = test_t[:8]
    pos = torch.full((8,), 2)  # the first word after <sot>
    dist, samples, q = batch_precision(dec, model, [SITE], SITE, queries, pos,
                                       generator=torch.Generator().manual_seed(0),
                                       return_samples=True)
    with torch.no_grad():
        _, cache = model.run_with_cache(queries, names_filter=[SITE])  # whole text tower
        _, s_cache = model.run_with_cache(samples, names_filter=[SITE])
    assert torch.allclose(q, cache[SITE][torch.arange(8), 2], atol=1e-5)
    pad, eot = model.tokenizer.pad_id, model.tokenizer.eot_token_id
    for i in range(8):
        d = (s_cache[SITE][i] - q[i]).norm(dim=-1) / q[i].norm()
        match = (samples[i] != pad) & (samples[i] != eot)  # the paper skips PAD and EOS
        assert dist[i].item() == pytest.approx(d[match].min().item(), abs=1e-4)
    # sampling + verification also runs end to end on the tower, sorted by distance
    scored = sample_preimage(dec, model, [SITE], SITE, q[0], n=8)
    assert [c.distance for c in scored] == sorted(c.distance for c in scored)
    ref = score_candidates(model, SITE, q[0], queries[:1], pad_id=pad)
    assert ref[0].distance < 1e-5 and ref[0].in_preimage  # the query's own caption
