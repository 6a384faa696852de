"""HookedOpenCLIP against open_clip itself: parity of embeddings, of every decomposed quantity
(with independent references computed from the OpenCLIP modules), stop_at_layer, interventions,
refusals and hook-name errors."""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP

from msae_plugin.errors import UnknownHookError, UnsupportedModelError
from msae_plugin.vision.hooked_clip import HookedOpenCLIP

TOL = 1e-5

TEXT = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=2)


def tiny(vision: dict | None = None, custom_text: bool = False, **kw) -> torch.nn.Module:
    vcfg = dict(image_size=16, patch_size=4, width=32, layers=3, head_width=8)
    vcfg.update(vision or {})
    cls = CustomTextCLIP if custom_text else CLIP
    torch.manual_seed(0)
    return cls(embed_dim=24, vision_cfg=vcfg, text_cfg=dict(TEXT), **kw).eval()


def images_for(clip: torch.nn.Module, n: int = 3) -> torch.Tensor:
    h, w = clip.visual.image_size
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(1))


def tokens(n: int = 3, ctx: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    t = torch.randint(1, 62, (n, ctx), generator=g)
    t[:, 0] = 62  # "sot"
    lengths = torch.tensor([3, 5, ctx - 1])[:n]
    for i, length in enumerate(lengths):
        t[i, length] = 63  # "eot": the highest id, where argmax pooling reads
        t[i, length + 1:] = 0
    return t


def all_hook_parity(model: HookedOpenCLIP, clip: torch.nn.Module, x: torch.Tensor, tok) -> None:
    """Embeddings equal open_clip's on both paths: no hooks (fused attention) and every hook
    cached (decomposed attention with explicit softmax)."""
    with torch.no_grad():
        ref = clip.encode_image(x)
        assert (model.encode_image(x) - ref).abs().max() <= TOL
        out, cache = model.run_with_cache(x)
        assert (out - ref).abs().max() <= TOL
        assert "blocks.0.attn.hook_pattern" in cache and "hook_image_embed" in cache
        if tok is not None:
            ref_t = clip.encode_text(tok)
            assert (model.encode_text(tok) - ref_t).abs().max() <= TOL
            out_t, cache_t = model.run_with_cache(tok)
            assert (out_t - ref_t).abs().max() <= TOL
            assert "text.blocks.0.attn.hook_z" in cache_t


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16"])
def test_parity_standard_openclip_models(name: str) -> None:
    torch.manual_seed(0)
    clip = open_clip.create_model(name).eval()
    model = HookedOpenCLIP(clip, model_name=name)
    x = images_for(clip, 2)
    tok = open_clip.get_tokenizer(name)(["a photo of a cat", "two dogs on grass"])
    all_hook_parity(model, clip, x, tok)
    assert model.cfg.n_layers == 12 and model.cfg.d_model == 768 and model.cfg.n_heads == 12
    assert model.cfg.n_ctx == (50 if name == "ViT-B-32" else 197)
    # the q/k/v/z-only path (SDPA on our own projections) is exact too
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=["blocks.5.attn.hook_z"])
        assert (model(x) - clip.encode_image(x)).abs().max() <= TOL
    assert cache["blocks.5.attn.hook_z"].shape == (2, model.cfg.n_ctx, 12, 64)


@pytest.mark.parametrize(
    "label,vision,kw",
    [
        ("layerscale", dict(ls_init_value=0.3), {}),
        ("quickgelu", {}, dict(quick_gelu=True)),
        ("non_square", dict(image_size=(16, 24), patch_size=(4, 6)), {}),
        ("avg_pool", dict(pool_type="avg"), {}),
        ("ln_after_pool", dict(final_ln_after_pool=True), {}),
        ("no_ln_pre", dict(no_ln_pre=True), {}),
        ("custom_text", {}, dict(custom_text=True)),
    ],
)
def test_parity_custom_configs(label: str, vision: dict, kw: dict) -> None:
    custom_text = kw.pop("custom_text", False)
    clip = tiny(vision, custom_text=custom_text, **kw)
    model = HookedOpenCLIP(clip, model_name=label)
    all_hook_parity(model, clip, images_for(clip), tokens())
    if label == "layerscale":
        assert model.cfg.layer_scale
    if label == "quickgelu":
        assert model.cfg.act_fn == "QuickGELU"
    if label == "non_square":
        assert model.cfg.grid_size == (4, 4) and model.cfg.n_ctx == 17


def test_decomposition_matches_independent_reference() -> None:
    clip = tiny(dict(ls_init_value=0.5))
    model = HookedOpenCLIP(clip)
    x = images_for(clip)
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
        for i, blk in enumerate(clip.visual.transformer.resblocks):
            pre = cache[f"blocks.{i}.hook_resid_pre"]
            # residual bookkeeping (attn_out / mlp_out are after LayerScale)
            mid = cache[f"blocks.{i}.hook_resid_mid"]
            assert torch.allclose(pre + cache[f"blocks.{i}.hook_attn_out"], mid, atol=TOL)
            post = cache[f"blocks.{i}.hook_resid_post"]
            assert torch.allclose(mid + cache[f"blocks.{i}.hook_mlp_out"], post, atol=TOL)
            assert torch.allclose(blk(pre), post, atol=TOL)  # OpenCLIP's own block
            # per-head pattern equals nn.MultiheadAttention's own weights
            ln = blk.ln_1(pre)
            _, weights = blk.attn(ln, ln, ln, need_weights=True, average_attn_weights=False)
            assert torch.allclose(cache[f"blocks.{i}.attn.hook_pattern"], weights, atol=TOL)
            # q from the packed in-projection; LayerNorm hooks compose back to ln_1's output
            q = F.linear(ln, blk.attn.in_proj_weight[:32], blk.attn.in_proj_bias[:32])
            assert torch.allclose(cache[f"blocks.{i}.attn.hook_q"].flatten(-2), q, atol=TOL)
            normed = cache[f"blocks.{i}.ln1.hook_normalized"]
            assert torch.allclose(normed * blk.ln_1.weight + blk.ln_1.bias, ln, atol=TOL)
            pre_act = cache[f"blocks.{i}.mlp.hook_pre"]
            assert torch.allclose(cache[f"blocks.{i}.mlp.hook_post"], blk.mlp.gelu(pre_act))
        # final LN and projection
        tokens_post = cache["hook_ln_post"]
        assert torch.allclose(tokens_post[:, 0] @ clip.visual.proj, clip.encode_image(x), atol=TOL)


def test_text_scores_are_causally_masked() -> None:
    clip = tiny()
    model = HookedOpenCLIP(clip)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(), names_filter=lambda n: n.startswith("text."))
    scores = cache["text.blocks.1.attn.hook_attn_scores"]
    upper = torch.triu(torch.ones(8, 8, dtype=torch.bool), 1)
    assert torch.isneginf(scores[..., upper]).all()
    assert torch.isfinite(scores[..., ~upper]).all()
    assert not any(not n.startswith("text.") for n in cache)


def test_stop_at_layer_skips_later_blocks() -> None:
    clip = tiny()
    model = HookedOpenCLIP(clip)
    x = images_for(clip)
    fired = []
    handle = clip.visual.transformer.resblocks[2].ln_1.register_forward_hook(
        lambda *a: fired.append(1)
    )
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=["blocks.1.hook_resid_post"])
        fired.clear()
        resid = model(x, stop_at_layer=2)
        assert not fired, "block 2 ran although stop_at_layer=2"
        assert torch.allclose(resid, cache["blocks.1.hook_resid_post"])
        assert torch.allclose(model(x, stop_at_layer=-1), resid)
        _, c2 = model.run_with_cache(x, names_filter=["blocks.1.hook_resid_post"], stop_at_layer=2)
        assert torch.allclose(c2["blocks.1.hook_resid_post"], resid) and not fired
    handle.remove()


def test_interventions_propagate_and_weights_are_shared() -> None:
    clip = tiny()
    model = HookedOpenCLIP(clip)
    x = images_for(clip)
    with torch.no_grad():
        # zeroing every head's z leaves only out_proj's bias as block 0's attention output
        def zero_z(z, hook):
            return torch.zeros_like(z)

        _, cache = model.run_with_cache(x, names_filter=["blocks.0.hook_attn_out"])
        model.add_hook("blocks.0.attn.hook_z", zero_z)
        _, cache2 = model.run_with_cache(x, names_filter=["blocks.0.hook_attn_out"])
        model.reset_hooks()
        bias = clip.visual.transformer.resblocks[0].attn.out_proj.bias
        assert torch.allclose(cache2["blocks.0.hook_attn_out"], bias.expand_as(cache2["blocks.0.hook_attn_out"]))
        assert not torch.allclose(cache["blocks.0.hook_attn_out"], cache2["blocks.0.hook_attn_out"])
        # no weight copies: editing the OpenCLIP model changes the hooked model
        before = model(x)
        clip.visual.proj.mul_(2.0)
        assert torch.allclose(model(x), 2 * before, atol=TOL)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in clip.parameters())


def test_gradients_match_open_clip() -> None:
    clip = tiny()
    model = HookedOpenCLIP(clip)
    x = images_for(clip)
    clip.encode_image(x).pow(2).sum().backward()
    ref = clip.visual.conv1.weight.grad.clone()
    clip.zero_grad()
    _, cache = model.run_with_cache(x, names_filter=["blocks.1.attn.hook_pattern"])
    # run_with_cache detaches; a plain forward carries gradients
    model(x).pow(2).sum().backward()
    assert torch.allclose(clip.visual.conv1.weight.grad, ref, atol=1e-5)


def test_bfloat16() -> None:
    clip = tiny()
    model = HookedOpenCLIP(clip).to(torch.bfloat16)
    x = images_for(clip).to(torch.bfloat16)
    with torch.no_grad():
        ref = clip.encode_image(x)
        out, cache = model.run_with_cache(x, names_filter=["blocks.2.attn.hook_pattern"])
    assert out.dtype == torch.bfloat16 and cache["blocks.2.attn.hook_pattern"].dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref.float(), atol=0.05, rtol=0.05)


def test_hook_name_errors_suggest_the_nearest_name() -> None:
    clip = tiny()
    model = HookedOpenCLIP(clip)
    x = images_for(clip)
    with pytest.raises(UnknownHookError, match="Did you mean 'blocks.1.hook_resid_post'"):
        model.run_with_cache(x, names_filter=["blocks.1.hook_resid_pots"])
    with pytest.raises(UnknownHookError, match="Did you mean 'blocks.0.attn.hook_z'"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hookz", lambda t, hook: t)])
    with pytest.raises(UnknownHookError, match="Did you mean"):
        model.add_hook("blocks.0.mlp.hook_pst", lambda t, hook: t)
    with pytest.raises(UnknownHookError, match="text tower"):
        model.run_with_cache(x, names_filter=["text.blocks.0.hook_resid_post"])
    with pytest.raises(UnknownHookError, match="image tower"):
        model.run_with_cache(tokens(), names_filter=["blocks.0.hook_resid_post"])
    with pytest.raises(UnknownHookError, match="stop_at_layer=2"):
        model.run_with_cache(x, names_filter=["blocks.2.hook_resid_post"], stop_at_layer=2)


def test_unsupported_models_are_refused_naming_what_is_supported() -> None:
    with pytest.raises(UnsupportedModelError, match="custom attention blocks"):
        HookedOpenCLIP(tiny(dict(qk_norm=True)))
    with pytest.raises(UnsupportedModelError, match="attentional pooling"):
        HookedOpenCLIP(tiny(dict(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2)))
    resnet = CLIP(embed_dim=24, vision_cfg=dict(layers=(1, 1, 1, 1), width=8, image_size=32),
                  text_cfg=dict(TEXT))
    with pytest.raises(UnsupportedModelError, match="ResNet"):
        HookedOpenCLIP(resnet)
    timm_clip = CLIP(
        embed_dim=24,
        vision_cfg=dict(timm_model_name="vit_tiny_patch16_224", timm_model_pretrained=False,
                        image_size=224),
        text_cfg=dict(TEXT),
    )
    with pytest.raises(UnsupportedModelError, match="timm trunk.*Supported: native OpenCLIP ViT"):
        HookedOpenCLIP(timm_clip)


def test_unsupported_text_tower_keeps_the_image_tower() -> None:
    clip = tiny()
    broken = copy.deepcopy(clip)
    broken.transformer = torch.nn.Identity()  # e.g. an HF text encoder: not reproducible
    model = HookedOpenCLIP(broken)
    assert model.text is None and "text." not in "".join(model.hook_dict)
    with torch.no_grad():
        assert torch.allclose(model(images_for(clip)), clip.encode_image(images_for(clip)), atol=TOL)
    with pytest.raises(UnsupportedModelError, match="cannot run the text tower"):
        model(tokens())


def test_unknown_model_name_and_offline_pretrained() -> None:
    from msae_plugin.vision.loading import PretrainedUnavailableError

    with pytest.raises(UnsupportedModelError, match="Did you mean 'ViT-B-32'"):
        HookedOpenCLIP.from_pretrained("ViT-B-23")
    missing = "/nonexistent/open_clip_pytorch_model.bin"
    with pytest.raises(PretrainedUnavailableError, match="Hugging Face hub|file path"):
        HookedOpenCLIP.from_pretrained("ViT-B-32", pretrained=missing)


def test_registered_by_name() -> None:
    from msae_plugin.registration import HOOKED_MODELS

    assert HOOKED_MODELS["HookedOpenCLIP"] is HookedOpenCLIP


def test_parity_embedded_model() -> None:
    from msae_plugin.embedded.dataset import make_digit_scenes, normalize

    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip")
    scenes = make_digit_scenes(8, split="test", seed=3)
    tok = model.to_tokens(scenes.captions[:4])
    all_hook_parity(model, model.clip, normalize(scenes.images), tok)
    assert model.cfg.model_name == "msae-tiny-clip" and model.cfg.pretrained == "embedded"
