"""Every hook point ``add_sae`` accepts on HookedOpenCLIP really runs the spliced SAE.

The hooked components skip their decomposed computation when none of their hook points is live;
SAELens splices by *replacing* the hook point with its wrapper, so these tests check, hook by
hook and on both towers, that an SAE changes the output without its error term, leaves it
unchanged with it, and that ablating every latent (with the error term) changes it again. The
reference is always the plain model's own output, never the spliced path.
"""

from __future__ import annotations

import pytest
import torch
from open_clip.model import CLIP
from sae_lens import StandardSAE, StandardSAEConfig

from msae_plugin.errors import SAEModelMismatchError
from msae_plugin.vision.hooked_clip import HookedOpenCLIP


def _tiny() -> HookedOpenCLIP:
    torch.manual_seed(0)
    clip = CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=16, patch_size=4, width=32, layers=2, head_width=8),
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=4, layers=2),
    ).eval()
    return HookedOpenCLIP(clip, model_name="tiny")


ALL_HOOKS = list(_tiny().hook_dict)
REFUSED = [h for h in ALL_HOOKS if h.endswith(("hook_attn_scores", "hook_pattern"))]
SPLICEABLE = [h for h in ALL_HOOKS if h not in REFUSED]


@pytest.fixture(scope="module")
def model() -> HookedOpenCLIP:
    return _tiny()


def _input(hook: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if hook.startswith("text."):
        return torch.randint(1, 64, (2, 8), generator=g)
    return torch.randn(2, 3, 16, 16, generator=g)


def _sae(hook: str, d_in: int, **cfg_kwargs) -> StandardSAE:
    torch.manual_seed(1)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=48, **cfg_kwargs)
    cfg.metadata.hook_name = hook
    cfg.metadata.model_name = "tiny"
    sae = StandardSAE(cfg)
    with torch.no_grad():  # a decoder bias so that even dead latents leave a visible trace
        sae.b_dec.normal_(0, 0.5)
    return sae


def _ablate_all(acts: torch.Tensor, hook) -> torch.Tensor:
    return torch.zeros_like(acts)


def test_the_hook_list_covers_every_kind_of_point() -> None:
    # guards the parametrisation: if hook names change, the test below must still see them all
    for suffix in ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z",
                   "ln1.hook_scale", "ln1.hook_normalized", "ln2.hook_scale",
                   "mlp.hook_pre", "hook_resid_post"):
        assert f"blocks.1.{suffix}" in SPLICEABLE
        assert f"text.blocks.1.{suffix}" in SPLICEABLE
    assert {"hook_embed", "hook_image_embed", "text.hook_text_embed"} <= set(SPLICEABLE)
    assert len(REFUSED) == 4 * 2  # scores + pattern, 2 blocks, 2 towers


@pytest.mark.parametrize("hook", SPLICEABLE)
def test_every_accepted_hook_runs_the_sae(model: HookedOpenCLIP, hook: str) -> None:
    x = _input(hook)
    with torch.no_grad():
        base = model(x)
        sae = _sae(hook, model.activation_width(hook))
        with model.saes(saes=[sae], use_error_term=False):
            replaced = model(x)
        with model.saes(saes=[sae], use_error_term=True):
            neutral = model(x)
            ablated = model.run_with_hooks(
                x, fwd_hooks=[(f"{hook}.hook_sae_acts_post", _ablate_all)]
            )
    assert not torch.allclose(replaced, base, atol=1e-4), "the SAE output was not used"
    torch.testing.assert_close(neutral, base, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ablated, base, atol=1e-4), "ablating every latent changed nothing"
    assert model.acts_to_saes == {}


@pytest.mark.parametrize("hook", REFUSED)
def test_refused_hooks_raise(model: HookedOpenCLIP, hook: str) -> None:
    sae = _sae(hook, 16)
    with pytest.raises(SAEModelMismatchError, match="attention scores/patterns"):
        model.add_sae(sae)
    assert model.acts_to_saes == {}


@pytest.mark.parametrize("head_hook", ["hook_q", "hook_k", "hook_v", "hook_z"])
def test_head_hook_sae_sees_flattened_heads(model: HookedOpenCLIP, head_hook: str) -> None:
    """A q/k/v/z SAE reads ``[batch, pos, n_heads * d_head]`` (SAELens's hook_z convention),
    and its reconstruction is put back per head: compare with an independent hook that does the
    same flatten -> SAE -> unflatten by hand."""
    hook = f"blocks.0.attn.{head_hook}"
    x = _input(hook)
    sae = _sae(hook, model.cfg.d_model)

    def by_hand(act: torch.Tensor, hook) -> torch.Tensor:
        flat = act.reshape(*act.shape[:2], -1)
        return sae.decode(sae.encode(flat)).reshape(act.shape)

    with torch.no_grad():
        expected = model.run_with_hooks(x, fwd_hooks=[(hook, by_hand)])
        with model.saes(saes=[sae], use_error_term=False):
            got = model(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_saelens_hook_z_reshaping_saes_also_work(model: HookedOpenCLIP) -> None:
    """An SAE built with SAELens's ``reshape_activations="hook_z"`` flattens heads itself; it
    must get the per-head tensor (not a pre-flattened one) and give the same result."""
    hook = "blocks.1.attn.hook_z"
    x = _input(hook)
    plain = _sae(hook, model.cfg.d_model)
    reshaping = _sae(hook, model.cfg.d_model, reshape_activations="hook_z")
    reshaping.load_state_dict(plain.state_dict())
    with torch.no_grad():
        with model.saes(saes=[plain], use_error_term=False):
            a = model(x)
        with model.saes(saes=[reshaping], use_error_term=False):
            b = model(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, model(x), atol=1e-4)
