"""The InversionView decoder network: conditioning, causality, sampling, and that it can learn
to read an activation (a tiny synthetic inversion task trained for real)."""

from __future__ import annotations

import pytest
import torch

from msae_plugin.inversionview.decoder import DecoderConfig, InversionViewDecoder

V, PAD, BOS, EOS = 12, 0, 1, 2


def cfg(**kw) -> DecoderConfig:
    base = dict(vocab_size=V, n_ctx=8, d_act=6, n_sites=3, pad_id=PAD, bos_id=BOS, eos_id=EOS,
                d_model=32, n_layers=2, n_heads=4, n_act_blocks=2)
    base.update(kw)
    return DecoderConfig(**base)


def test_causal_and_conditioned() -> None:
    torch.manual_seed(0)
    dec = InversionViewDecoder(cfg()).eval()
    tok = torch.randint(3, V, (2, 6))
    act = torch.randn(2, 6)
    site = torch.tensor([0, 2])
    out = dec(tok, act, site)
    assert out.shape == (2, 6, V)
    changed = tok.clone()
    changed[:, 4] = (changed[:, 4] + 1 - 3) % (V - 3) + 3
    out2 = dec(changed, act, site)
    assert torch.allclose(out[:, :4], out2[:, :4], atol=1e-6)  # no look-ahead
    assert not torch.allclose(out[:, 4:], out2[:, 4:])
    # the activation and the site reach every position, the first one included
    assert not torch.allclose(dec(tok, act + 1.0, site)[:, 0], out[:, 0])
    assert not torch.allclose(dec(tok, act, torch.tensor([1, 1]))[:, 0], out[:, 0])


def test_learns_to_read_an_activation() -> None:
    """Activation = a fixed random projection of a 2-digit input; after training the decoder
    regenerates the input from the activation far above chance."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    proj = torch.randn(2 * 9, 6, generator=g)

    def batch(n: int):
        digits = torch.randint(0, 9, (n, 2), generator=g)
        onehot = torch.zeros(n, 18)
        onehot[torch.arange(n), digits[:, 0]] = 1
        onehot[torch.arange(n), 9 + digits[:, 1]] = 1
        tok = torch.cat([torch.full((n, 1), BOS), digits + 3, torch.full((n, 1), EOS)], 1)
        return tok, onehot @ proj

    dec = InversionViewDecoder(cfg(n_ctx=4))
    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        tok, act = batch(128)
        loss = dec.loss(tok, act, torch.zeros(128, dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.3 * first
    dec.eval()
    tok, act = batch(200)
    samples = dec.sample(act, torch.zeros(200, dtype=torch.long), temperature=0.5,
                         generator=torch.Generator().manual_seed(2))
    exact = (samples[:, :4] == tok).all(dim=1).float().mean().item()
    assert exact > 0.5, exact  # chance is 1/81


def test_sampling_and_errors() -> None:
    dec = InversionViewDecoder(cfg()).eval()
    act, site = torch.randn(5, 6), torch.zeros(5, dtype=torch.long)
    s = dec.sample(act, site, temperature=1.0, noise=0.1, generator=torch.Generator().manual_seed(0))
    assert s.shape[0] == 5 and s.shape[1] <= 8 and (s[:, 0] == BOS).all()
    ended = 0
    for row in s:  # everything after the first EOS is padding
        eos = (row == EOS).nonzero()
        if len(eos):
            ended += 1
            assert (row[eos[0, 0] + 1:] == PAD).all()
        else:
            assert len(row) == 8  # a row without EOS ran to max_len
    assert ended > 0  # the padding rule above was exercised
    with pytest.raises(ValueError, match="activation width 7 does not match the decoder's d_act=6"):
        dec(torch.ones(1, 3, dtype=torch.long), torch.randn(1, 7), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the decoder's n_ctx=8"):
        dec(torch.ones(1, 9, dtype=torch.long), torch.randn(1, 6), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty"):
        dec(torch.ones(1, 0, dtype=torch.long), torch.randn(1, 6), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="site ids"):
        dec(torch.ones(1, 3, dtype=torch.long), torch.randn(1, 6), torch.tensor([3]))
    with pytest.raises(ValueError, match="temperature"):
        dec.sample(act, site, temperature=0)
    with pytest.raises(ValueError, match="divisible"):
        cfg(d_model=30)


def test_checkpoint_round_trip_identity_and_registry(tmp_path) -> None:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from msae_plugin.inversionview.checkpoint import load_decoder, save_decoder
    from msae_plugin.registration import DECODERS

    assert DECODERS["inversionview"].decoder_class is InversionViewDecoder
    torch.manual_seed(0)
    tcfg = HookedTransformerConfig(n_layers=1, d_model=6, n_ctx=8, d_head=3, n_heads=2,
                                   d_vocab=V, act_fn="relu")
    probed, other = HookedTransformer(tcfg), HookedTransformer(tcfg)
    dec = InversionViewDecoder(cfg()).eval()
    save_decoder(dec, tmp_path / "d", ["blocks.0.hook_resid_post"] * 3, probed, "toy")
    loaded, meta = load_decoder(tmp_path / "d", probed=probed)
    tok, act, site = torch.ones(2, 4, dtype=torch.long), torch.randn(2, 6), torch.zeros(2).long()
    assert torch.equal(loaded(tok, act, site), dec(tok, act, site))
    assert meta["hooks"] == ["blocks.0.hook_resid_post"] * 3
    assert not list(tmp_path.glob("d/.*"))  # no temporary files left behind
    with pytest.raises(ValueError, match="different probed model"):
        load_decoder(tmp_path / "d", probed=other)
    (tmp_path / "d" / "decoder.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt or incompatible"):
        load_decoder(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="not a decoder checkpoint"):
        load_decoder(tmp_path / "missing")


def test_cached_sampling_equals_full_recomputation() -> None:
    """sample() reuses keys/values of the prefix; a reference that re-runs the whole prefix at
    every step with the same random draws must give the same tokens."""
    torch.manual_seed(0)
    dec = InversionViewDecoder(cfg(n_ctx=8)).eval()
    act, site = torch.randn(16, 6), torch.randint(0, 3, (16,))
    got = dec.sample(act, site, temperature=1.5, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    ref = torch.full((16, 1), BOS)
    done = torch.zeros(16, dtype=torch.bool)
    with torch.no_grad():
        while ref.shape[1] < 8 and not done.all():
            probs = torch.softmax(dec(ref, act, site)[:, -1] / 1.5, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=g).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            ref = torch.cat([ref, nxt[:, None]], dim=1)
            done |= nxt == EOS
    assert torch.equal(got, ref)
    # and the cached logits equal the full forward's at every position
    with torch.no_grad():
        full = dec(ref, act, site)
        z = dec.act_proc(act, site)
        first, past = dec._run(ref[:, :3], z)
        rest, _ = dec._run(ref[:, 3:], None, past)
    assert torch.allclose(torch.cat([first, rest], dim=1), full, atol=1e-5)
