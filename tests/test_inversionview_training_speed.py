"""The faster InversionView training path computes what the old one did (issue 14, part 3).

Each speed-up is checked against the computation it replaced, written out here: one QKV
projection instead of two, the "math" attention kernel instead of the default one on CPU, the
fused AdamW kernel, and the addition task's input sampler that range-checks only the drawn rows.
Equal to float rounding where the kernels differ, identical where they do not. No timing here
(that is measured in docs/benchmarks.md, B7 training throughput).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from msae_plugin.inversionview import addition as A
from msae_plugin.inversionview import addition_decoder as AD
from msae_plugin.inversionview.decoder import DecoderConfig, InversionViewDecoder, SlotAttention
from msae_plugin.inversionview.training import PairGenerator, train_decoder

SITES = ("blocks.0.hook_resid_pre", "blocks.0.attn.hook_result.1", "blocks.1.hook_resid_post")


def _old_slot_attention(self: SlotAttention, x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """The pre-change full-prefix path: queries from a projection of the tokens alone, keys and
    values from a second projection of [slot, tokens], default SDPA kernel."""
    b, t, d = x.shape
    h = self.n_heads
    q = self.qkv(x)[..., :d]
    k, v = self.qkv(torch.cat([slot.unsqueeze(1), x], dim=1))[..., d:].chunk(2, dim=-1)
    k = k.view(b, t + 1, h, d // h).transpose(1, 2)
    v = v.view(b, t + 1, h, d // h).transpose(1, 2)
    mask = torch.ones(t, t + 1, dtype=torch.bool).tril(diagonal=1)
    q = q.reshape(b, t, h, d // h).transpose(1, 2)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return self.out(z.transpose(1, 2).reshape(b, t, d))


def _cfg(**kw) -> DecoderConfig:
    base = dict(vocab_size=A.D_VOCAB, n_ctx=A.SEQ_LEN, d_act=32, n_sites=len(SITES), pad_id=A.PAD,
                bos_id=A.BOS, eos_id=A.EOS, d_model=32, n_layers=2, n_heads=4, n_act_blocks=2)
    return DecoderConfig(**(base | kw))


def test_slot_attention_matches_two_projection_computation() -> None:
    torch.manual_seed(0)
    attn = SlotAttention(_cfg())
    x = torch.randn(8, 13, 32, requires_grad=True)
    slot = torch.randn(8, 32, requires_grad=True)
    new, (k, v) = attn(x, slot)
    old = _old_slot_attention(attn, x, slot)
    assert new.shape == (8, 13, 32) and k.shape == (8, 4, 14, 8)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
    g_new = torch.autograd.grad(new.square().sum(), [x, slot, attn.qkv.weight])
    g_old = torch.autograd.grad(old.square().sum(), [x, slot, attn.qkv.weight])
    for a, b in zip(g_new, g_old, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_decoder_loss_and_gradients_match_old_attention(monkeypatch) -> None:
    """Identical loss on a fixed batch of real addition problems, whole decoder."""
    torch.manual_seed(1)
    dec = InversionViewDecoder(_cfg()).train()
    tokens = A.make_batch(A.train_test_split()[0][:64])[0]
    act = torch.randn(64, 32)
    site = torch.arange(64) % len(SITES)
    loss_new = dec.loss(tokens, act, site)
    grads_new = torch.autograd.grad(loss_new, list(dec.parameters()))
    monkeypatch.setattr(SlotAttention, "forward",
                        lambda self, x, slot, past=None: (_old_slot_attention(self, x, slot), None))
    loss_old = dec.loss(tokens, act, site)
    grads_old = torch.autograd.grad(loss_old, list(dec.parameters()))
    torch.testing.assert_close(loss_new, loss_old, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_new, grads_old, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cached_sampling_still_matches_full_recomputation() -> None:
    """Sampling (default kernel, one token at a time) agrees with the training path (math
    kernel, whole prefix) on the logits of every prefix."""
    torch.manual_seed(2)
    dec = InversionViewDecoder(_cfg()).eval()
    act, site = torch.randn(5, 32), torch.tensor([0, 1, 2, 0, 1])
    g = torch.Generator().manual_seed(0)
    out = dec.sample(act, site, generator=g)
    with torch.no_grad():
        full = dec(out, act, site)
        z = dec.act_proc(act, site)
        logits, past = dec._run(out[:, :1], z)
        steps = [logits[:, -1]]
        for i in range(1, out.shape[1]):
            logits, past = dec._run(out[:, i : i + 1], z, past)
            steps.append(logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=1e-4, atol=1e-5)


def test_addition_sampler_draws_exactly_what_make_batch_drew() -> None:
    """Same tokens and same generator state afterwards as the old
    ``make_batch(train, batch_size=n, generator=g)``: the pair stream is unchanged."""
    probed = A.build_probed_model(A.probed_model_config(d_model=16, n_heads=4, seed=0)).eval()
    probed.set_use_attn_result(True)
    pairs = AD.pair_generator(probed, seed=0)
    train_t = torch.tensor(A.train_test_split()[0])
    g_new, g_old = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for n in (1, 7, 256):
        new = pairs.sample_inputs(n, g_new)
        old = A.make_batch(train_t, batch_size=n, generator=g_old)[0]
        assert torch.equal(new, old)
    assert torch.equal(g_new.get_state(), g_old.get_state())


def _tiny_probed():
    probed = A.build_probed_model(A.probed_model_config(d_model=16, n_heads=4, seed=0)).eval()
    probed.set_use_attn_result(True)
    return probed


def _sampler(n: int, g: torch.Generator) -> torch.Tensor:
    return A.make_batch(torch.tensor([[123, 456], [999, 999], [100, 905], [350, 650]]),
                        batch_size=n, generator=g)[0]


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_train_decoder_matches_unfused_reference_loop(dropout: float) -> None:
    """A few steps of :func:`train_decoder` (fused AdamW, new attention) against the loop it
    replaced (per-parameter AdamW, written out): same losses and weights to rounding. With
    dropout the masks are drawn from the same global seed in the same order."""
    probed = _tiny_probed()
    torch.manual_seed(3)
    dec_new = InversionViewDecoder(_cfg(d_act=16, dropout=dropout))
    dec_old = InversionViewDecoder(_cfg(d_act=16, dropout=dropout))
    dec_old.load_state_dict(dec_new.state_dict())

    def pairs() -> PairGenerator:
        return PairGenerator(probed, SITES, _sampler, [A.PAD, A.BOS, A.EOS], bos_id=A.BOS, seed=4)

    torch.manual_seed(9)
    losses_new = train_decoder(dec_new, pairs(), steps=6, batch_size=32, progress=False,
                               log_every=1)
    torch.manual_seed(9)
    ref = pairs()
    opt = torch.optim.AdamW(dec_old.parameters(), lr=1e-3, weight_decay=0.01, foreach=False)
    dec_old.train()
    losses_old = []
    for _ in range(6):
        b = ref(32)
        loss = dec_old.loss(b.tokens, b.acts, b.sites)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec_old.parameters(), 1.0)
        opt.step()
        losses_old.append(float(loss.detach()))
    assert losses_new == pytest.approx(losses_old, rel=1e-4)
    for (name, a), b in zip(dec_new.state_dict().items(), dec_old.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=name)
