"""Per-head sites, batched precision, resumable decoder training, registry loading, views."""

from __future__ import annotations

import json

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from msae_plugin.inversionview.checkpoint import load_decoder, save_decoder
from msae_plugin.inversionview.decoder import DecoderConfig, InversionViewDecoder
from msae_plugin.inversionview.preimage import activations_at, hook_block, split_site
from msae_plugin.inversionview.sampling import batch_precision, sample_preimage
from msae_plugin.inversionview.training import STATE_FILE, PairGenerator, train_decoder
from msae_plugin.inversionview.views import render_html

V, PAD, BOS, EOS = 9, 0, 1, 2
SITES = ["blocks.0.attn.hook_result.1", "blocks.1.hook_resid_post"]


@pytest.fixture(scope="module")
def probed() -> HookedTransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=7, d_head=4, n_heads=4,
                                  d_vocab=V, act_fn="relu", normalization_type="LN")
    model = HookedTransformer(cfg).eval()
    model.set_use_attn_result(True)
    return model


def sample_inputs(n: int, g: torch.Generator) -> torch.Tensor:
    t = torch.full((n, 6), EOS)
    t[:, 0] = BOS
    t[:, 1:5] = torch.randint(3, V, (n, 4), generator=g)
    return t


def decoder() -> InversionViewDecoder:
    torch.manual_seed(0)
    return InversionViewDecoder(DecoderConfig(
        vocab_size=V, n_ctx=7, d_act=16, n_sites=len(SITES), pad_id=PAD, bos_id=BOS,
        eos_id=EOS, d_model=32, n_layers=2, n_heads=4, n_act_blocks=2))


def test_per_head_site_is_that_heads_output(probed) -> None:
    tokens = sample_inputs(3, torch.Generator().manual_seed(0))
    got = activations_at(probed, tokens, "blocks.0.attn.hook_result.1")
    with torch.no_grad():
        _, cache = probed.run_with_cache(tokens)
    z = cache["blocks.0.attn.hook_z"][:, :, 1]  # [b, p, d_head]
    ref = z @ probed.blocks[0].attn.W_O[1]  # that head's write into the residual stream
    assert torch.allclose(got, ref, atol=1e-5)
    assert split_site(probed, "blocks.0.attn.hook_result.3") == ("blocks.0.attn.hook_result", 3)
    assert split_site(probed, "blocks.1.hook_resid_post") == ("blocks.1.hook_resid_post", None)
    with pytest.raises(ValueError, match="names head 4, but the probed model has 4 heads"):
        split_site(probed, "blocks.0.attn.hook_result.4")
    with pytest.raises(ValueError, match="Did you mean 'blocks.0.attn.hook_result'"):
        split_site(probed, "blocks.0.attn.hook_reslt.1")
    probed.set_use_attn_result(False)
    try:
        with pytest.raises(ValueError, match="set_use_attn_result"):
            split_site(probed, "blocks.0.attn.hook_result.1")
    finally:
        probed.set_use_attn_result(True)
    assert hook_block("text.blocks.3.hook_resid_post") == 3 and hook_block("hook_embed") is None


def test_batch_precision_matches_an_independent_full_forward(probed) -> None:
    dec = decoder()
    tokens = sample_inputs(12, torch.Generator().manual_seed(3))
    pos = torch.randint(1, 5, (12,), generator=torch.Generator().manual_seed(4))
    for site in SITES:
        dist, samples, queries = batch_precision(
            dec, probed, SITES, site, tokens, pos, generator=torch.Generator().manual_seed(5),
            return_samples=True)
        with torch.no_grad():
            _, q_cache = probed.run_with_cache(tokens)  # full forward, no stop_at_layer
            _, s_cache = probed.run_with_cache(samples)
        key, head = split_site(probed, site)
        q_ref = q_cache[key][torch.arange(12), pos]
        a = s_cache[key]
        if head is not None:
            q_ref, a = q_ref[:, head], a[:, :, head]
        assert torch.allclose(queries, q_ref, atol=1e-5)
        for i in range(12):
            d = (a[i] - q_ref[i]).norm(dim=-1) / q_ref[i].norm()
            d = d[(samples[i] != PAD) & (samples[i] != EOS)].min()  # the paper skips both
            assert dist[i].item() == pytest.approx(d.item(), abs=1e-5)


def test_interrupted_training_resumes_exactly(probed, tmp_path) -> None:
    def run(steps: int, ckpt, on_save=None) -> InversionViewDecoder:
        dec = decoder()
        pairs = PairGenerator(probed, SITES, sample_inputs, [PAD, BOS, EOS], bos_id=BOS, seed=1)
        train_decoder(dec, pairs, steps=steps, batch_size=16, lr=3e-3, schedule="cosine",
                      warmup=3, progress=False, checkpoint_dir=ckpt, save_every=5,
                      on_save=on_save)
        return dec

    straight = run(12, tmp_path / "a")

    def interrupt(step: int) -> None:
        if step == 5:
            raise KeyboardInterrupt  # Ctrl-C right after the step-5 checkpoint

    with pytest.raises(KeyboardInterrupt):
        run(12, tmp_path / "b", on_save=interrupt)
    assert torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)["step"] == 5
    resumed = run(12, tmp_path / "b")  # a fresh process would do the same: resume at step 5
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k
    assert torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)["step"] == 12
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot resume .* Delete it to start over"):
        run(3, tmp_path / "c")


def test_registry_loading_and_unknown_architecture(probed, tmp_path) -> None:
    dec = decoder()
    save_decoder(dec, tmp_path / "d", SITES, probed, probed_name="tiny")
    loaded, meta = load_decoder(tmp_path / "d", probed)
    assert type(loaded) is InversionViewDecoder and meta["architecture"] == "inversionview"
    cfg_path = tmp_path / "d" / "decoder_cfg.json"
    meta = json.loads(cfg_path.read_text())
    meta["architecture"] = "inversionveiw"
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown decoder architecture 'inversionveiw'. Did "
                       "you mean 'inversionview'"):
        load_decoder(tmp_path / "d")


def test_html_view_highlights_query_and_matches(probed) -> None:
    dec = decoder()
    tokens = sample_inputs(1, torch.Generator().manual_seed(0))
    tokens[0, 2] = 3  # token 3 renders as "<&>": the query shows it, escaped
    q = activations_at(probed, tokens, SITES[1])[0, 3]
    scored = sample_preimage(dec, probed, SITES, SITES[1], q, n=8)
    page = render_html(scored, lambda t: "<&>" if t[0] == 3 else str(t[0]), tokens[0].tolist(),
                       3, SITES[1])
    assert page.count('class="tok query"') == 1
    assert page.count('class="tok match"') == len(scored)
    assert f"{sum(c.distance <= 0.1 for c in scored)}/8 samples inside" in page
    body = page.split("<body>")[1]
    assert "<&>" not in body and "&lt;&amp;&gt;" in body
    assert page.count("<tr class=") == 8


def test_training_activation_noise(probed) -> None:
    clean = PairGenerator(probed, SITES[1:], sample_inputs, [PAD, BOS, EOS], bos_id=BOS, seed=4)
    noisy = PairGenerator(probed, SITES[1:], sample_inputs, [PAD, BOS, EOS], bos_id=BOS, seed=4,
                          noise=0.1)
    a, b = clean(256), noisy(256)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.positions, b.positions)
    rel = ((b.acts - a.acts).std(dim=-1) / a.acts.std(dim=-1)).mean()
    assert rel.item() == pytest.approx(0.1, rel=0.1)
    with pytest.raises(ValueError, match="noise must be ≥ 0"):
        PairGenerator(probed, SITES, sample_inputs, [PAD], bos_id=BOS, noise=-1)


def test_token_contrast_against_separate_forwards(probed) -> None:
    from msae_plugin.inversionview.sampling import token_contrast

    dec = decoder()
    samples = [[BOS, 3, 4, 5, EOS], [BOS, 6, EOS]]
    q, base = torch.randn(16), torch.randn(16)
    got = token_contrast(dec, samples, 1, q, base)
    assert [len(c) for c in got] == [5, 3] and got[0][0] == 0.0
    with torch.no_grad():
        for s, c in zip(samples, got, strict=True):
            t = torch.tensor([s])
            pq = torch.softmax(dec(t[:, :-1], q[None], torch.tensor([1])), -1)[0]
            pb = torch.softmax(dec(t[:, :-1], base[None], torch.tensor([1])), -1)[0]
            ref = [0.0] + [(pq[i, s[i + 1]] - pb[i, s[i + 1]]).item() for i in range(len(s) - 1)]
            assert c == pytest.approx(ref, abs=1e-5)
    page = render_html([], str, [BOS], 0, "x", contrast=[])
    assert "token colour" in page
