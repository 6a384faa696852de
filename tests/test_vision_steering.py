"""SAE splicing on HookedOpenCLIP through SAELens's own splicing functions, latent edits, token
masks, and mismatch errors. (The class-level ablation effect on the embedded model is tested in
test_vision_class_ablation.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from sae_lens import StandardSAE, StandardSAEConfig

from msae_plugin.errors import ModelInputError, SAEModelMismatchError, UnknownHookError
from msae_plugin.vision.hooked_clip import HookedOpenCLIP
from msae_plugin.vision.steering import (
    LatentEdit,
    SteeringError,
    class_latents,
    image_latent_means,
    steered_logits,
)

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def model() -> HookedOpenCLIP:
    torch.manual_seed(0)
    clip = CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=16, patch_size=4, width=32, layers=2, head_width=8),
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    ).eval()
    return HookedOpenCLIP(clip, model_name="tiny")


def make_sae(hook: str = HOOK, d_in: int = 32, d_sae: int = 64) -> StandardSAE:
    torch.manual_seed(1)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae)
    cfg.metadata.hook_name = hook
    cfg.metadata.model_name = "tiny"
    return StandardSAE(cfg)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 16, 16, generator=g)
    classifier = F.normalize(torch.randn(5, 16, generator=g), dim=-1)
    return x, classifier


def test_error_term_makes_empty_edits_neutral(model, data) -> None:
    x, classifier = data
    sae = make_sae()
    base = model.zero_shot_logits(x, classifier)
    assert torch.allclose(steered_logits(model, x, sae, classifier), base, atol=1e-4)
    without = steered_logits(model, x, sae, classifier, use_error_term=False)
    assert (without - base).abs().max() > 1e-2  # the (random) SAE's reconstruction differs
    edited = steered_logits(model, x, sae, classifier, [LatentEdit(range(16))])
    assert (edited - base).abs().max() > 1e-3
    assert model.acts_to_saes == {}  # the context manager removed the SAE again
    assert type(model.hook_dict[HOOK]).__name__ == "HookPoint"


def test_edits_change_latents_as_asked(model, data) -> None:
    x, _ = data
    sae = make_sae()
    name = f"{HOOK}.hook_sae_acts_post"
    edits = [
        LatentEdit([1, 2], "ablate"),
        LatentEdit([3], "clamp", 5.0),
        LatentEdit([4], "add", 2.0, positions=[0]),
    ]
    _, plain = model.run_with_cache_with_saes(x, saes=[sae], names_filter=[name])
    store = {}
    with model.saes(saes=[sae]):
        fwd = [(name, e.hook(64)) for e in edits] + [(name, lambda a, hook: store.setdefault("a", a))]
        model.run_with_hooks(x, fwd_hooks=fwd)
    after, before = store["a"], plain[name]
    assert (after[..., [1, 2]] == 0).all() and (after[..., 3] == 5.0).all()
    assert torch.allclose(after[:, 0, 4], before[:, 0, 4] + 2.0)
    assert torch.allclose(after[:, 1:, 4], before[:, 1:, 4])
    with pytest.raises(ValueError, match="latent indices"):
        LatentEdit([64]).hook(64)
    with pytest.raises(ValueError, match="edit mode"):
        LatentEdit([1], "scale")


def test_cls_bypass_mask(model, data) -> None:
    x, _ = data
    sae = make_sae()
    _, ref = model.run_with_cache(x, names_filter=[HOOK])
    out_name = f"{HOOK}.hook_sae_output"
    _, c = model.run_with_cache_with_saes(x, saes=[sae], exclude_special_tokens=True,
                                          names_filter=[out_name])
    spliced = c[out_name]
    assert torch.allclose(spliced[:, 0], ref[HOOK][:, 0])  # CLS keeps the original activation
    assert not torch.allclose(spliced[:, 1:], ref[HOOK][:, 1:])
    mask = torch.zeros(model.cfg.n_ctx, dtype=torch.bool)
    mask[5] = True
    _, c2 = model.run_with_cache_with_saes(x, saes=[sae], exclude_special_tokens=mask,
                                           names_filter=[out_name])
    assert torch.allclose(c2[out_name][:, 5], ref[HOOK][:, 5])
    assert not torch.allclose(c2[out_name][:, 0], ref[HOOK][:, 0])


def test_text_tower_splicing(model) -> None:
    sae = make_sae("text.blocks.0.hook_resid_post")
    tok = torch.tensor([[62, 5, 6, 63, 0, 0, 0, 0]])
    model._tokenizer = type("T", (), {"sot_token_id": 62, "eot_token_id": 63})()
    name = "text.blocks.0.hook_resid_post"
    _, ref = model.run_with_cache(tok, names_filter=[name])
    _, c = model.run_with_cache_with_saes(tok, saes=[sae], exclude_special_tokens=True,
                                          names_filter=[f"{name}.hook_sae_output"])
    out = c[f"{name}.hook_sae_output"]
    special = torch.tensor([True, False, False, True, True, True, True, True])
    assert torch.allclose(out[0, special], ref[name][0, special])
    assert not torch.allclose(out[0, ~special], ref[name][0, ~special])


def test_mismatched_saes_are_refused(model) -> None:
    with pytest.raises(SAEModelMismatchError, match="d_in=48 does not match the width 32"):
        model.add_sae(make_sae(d_in=48))
    with pytest.raises(SAEModelMismatchError, match="width 128"):
        model.add_sae(make_sae("blocks.0.mlp.hook_post"))
    with pytest.raises(UnknownHookError, match="Did you mean 'blocks.1.hook_resid_post'"):
        model.add_sae(make_sae("blocks.1.hook_resid_pots"))
    with pytest.raises(UnknownHookError, match="does not have"):
        model.add_sae(make_sae("blocks.7.hook_resid_post"))
    z = make_sae("blocks.1.attn.hook_z", d_in=32)  # 4 heads x 8 = 32: accepted
    model.add_sae(z)
    model.reset_saes()
    assert model.acts_to_saes == {}


@pytest.mark.parametrize(
    "mask,match",
    [
        (torch.zeros(5, dtype=torch.bool), r"shape \(5,\) but the images in this batch have 17"),
        (torch.zeros(3, 17, dtype=torch.bool), r"\[17\] \(same for every item\) or \[4, 17\]"),
        (torch.zeros(1, 4, 17, dtype=torch.bool), r"shape \(1, 4, 17\)"),
        ("cls", "must be True/False or a boolean position mask"),
    ],
)
def test_bad_image_token_masks_are_refused(model, data, mask, match: str) -> None:
    """A wrong-shaped bypass mask used to surface as a raw broadcast error inside SAELens's
    wrapper (or a bare ValueError)."""
    x, _ = data
    with pytest.raises(ModelInputError, match=match):
        model.run_with_saes(x, saes=[make_sae()], exclude_special_tokens=mask)
    assert model.acts_to_saes == {}


def test_bad_text_token_masks_are_refused(model) -> None:
    sae = make_sae("text.blocks.0.hook_resid_post")
    tok = torch.ones(2, 8, dtype=torch.long)
    with pytest.raises(ModelInputError, match=r"captions in this batch have 8 tokens"):
        model.run_with_saes(tok, saes=[sae], exclude_special_tokens=torch.zeros(3, 8).bool())
    with pytest.raises(ModelInputError, match="holds token ids"):
        model.run_with_saes(tok, saes=[sae], exclude_special_tokens=["<eot>"])
    # a [seq] mask applies to every caption
    _, ref = model.run_with_cache(tok, names_filter=["text.blocks.0.hook_resid_post"])
    keep = torch.tensor([True] + [False] * 7)
    name = "text.blocks.0.hook_resid_post.hook_sae_output"
    _, c = model.run_with_cache_with_saes(tok, saes=[sae], exclude_special_tokens=keep,
                                          names_filter=[name])
    assert torch.equal(c[name][:, 0], ref["text.blocks.0.hook_resid_post"][:, 0])


def test_bad_return_type_is_a_model_input_error(model, data) -> None:
    with pytest.raises(ModelInputError, match="return_type must be"):
        model(data[0], return_type="logits")


def test_bad_latent_edits_raise_steering_errors(model, data) -> None:
    """Edits that cannot apply say why, instead of truncating floats, indexing latents as
    positions, or failing with a raw IndexError inside the forward."""
    x, classifier = data
    sae = make_sae()
    with pytest.raises(SteeringError, match=r"latents must be integers, got \[1\.5\]"):
        LatentEdit([1.5])
    with pytest.raises(SteeringError, match=r"positions \[17\] are out of range for 17 tokens"):
        steered_logits(model, x, sae, classifier, [LatentEdit([1], positions=[17])])
    pooled = make_sae("hook_image_embed", d_in=16)
    with pytest.raises(SteeringError, match="need a token axis"):
        steered_logits(model, x, pooled, classifier, [LatentEdit([1], positions=[0])])
    assert model.acts_to_saes == {}
    means = torch.rand(6, 64)
    with pytest.raises(SteeringError, match="needs images of class 3"):
        class_latents(means, torch.tensor([0, 0, 1, 1, 2, 2]), 3, 4)
    with pytest.raises(SteeringError, match="n=65 latents requested"):
        class_latents(means, torch.tensor([0, 0, 1, 1, 2, 2]), 1, 65)


@pytest.mark.parametrize("hook,d_in", [(HOOK, 32), ("hook_image_embed", 16),
                                       ("blocks.1.attn.hook_q", 32)])
def test_image_latent_means_per_image(model, data, hook: str, d_in: int) -> None:
    """One row of latents per image: the token mean for token hooks, the latents themselves for
    the pooled embedding (which used to be averaged over the latents, giving one number)."""
    x, _ = data
    sae = make_sae(hook, d_in=d_in)
    got = image_latent_means(model, sae, x, batch_size=3)
    _, cache = model.run_with_cache(x, names_filter=[hook])
    acts = cache[hook].flatten(2) if cache[hook].dim() == 4 else cache[hook]
    latents = sae.encode(acts)
    expected = latents.mean(dim=1) if latents.dim() == 3 else latents
    assert got.shape == (4, 64)
    torch.testing.assert_close(got, expected)
