"""Which OpenCLIP models the hooked wrapper reproduces exactly, and clear refusals for the rest.

The wrapper re-expresses OpenCLIP's *native* ViT (``open_clip.transformer.VisionTransformer``
built from ``ResidualAttentionBlock`` s). Everything else is refused up front, naming what is
supported, rather than producing activations that silently differ from the real model.
"""

from __future__ import annotations

from torch import nn

from msae_plugin.errors import UnsupportedModelError

SUPPORTED = (
    "native OpenCLIP ViT towers (open_clip.transformer.VisionTransformer with default "
    "ResidualAttentionBlocks: e.g. ViT-B-32, ViT-B-16, ViT-L-14, ViT-H-14, ViT-bigG-14, "
    "custom configs with LayerScale, QuickGELU, non-square images, pool_type tok/avg, "
    "final_ln_after_pool, no_ln_pre) and OpenCLIP text transformers without CoCa class tokens"
)


def check_vision_tower(visual: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` unless ``visual`` is a reproducible native ViT."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    kind = type(visual).__name__
    if kind == "TimmModel":
        trunk = type(getattr(visual, "trunk", None)).__name__
        raise UnsupportedModelError(
            f"this model's image tower is a timm trunk ({trunk}); timm-based OpenCLIP models "
            f"(SigLIP, EVA, ViTamin, MobileCLIP, PE-Core, ...) are not supported. Supported: "
            f"{SUPPORTED}."
        )
    if not isinstance(visual, VisionTransformer):
        raise UnsupportedModelError(
            f"image tower {kind} is not a native OpenCLIP VisionTransformer (ResNet towers are not "
            f"supported). Supported: {SUPPORTED}."
        )
    if visual.attn_pool is not None:
        raise UnsupportedModelError(
            "attentional pooling (CoCa-style attn_pool) is not supported by the hooked wrapper. "
            f"Supported: {SUPPORTED}."
        )
    blocks = visual.transformer.resblocks
    if not all(type(b) is ResidualAttentionBlock for b in blocks):
        raise UnsupportedModelError(
            "custom attention blocks (qk_norm, scaled_cosine_attn, scale_heads, scale_attn, "
            "scale_fc or block_type='custom') are not supported. Supported: " + SUPPORTED + "."
        )
    if not visual.transformer.batch_first:
        raise UnsupportedModelError("sequence-first (LND) OpenCLIP towers are not supported")


def check_text_tower(parts: object) -> str | None:
    """Return ``None`` if the text tower is reproducible, else the reason it is not."""
    from open_clip.transformer import ResidualAttentionBlock

    transformer = getattr(parts, "transformer", None)
    if transformer is None or not hasattr(transformer, "resblocks"):
        return "the text tower is not an OpenCLIP TextTransformer (e.g. a Hugging Face encoder)"
    if getattr(parts, "cls_emb", None) is not None:
        return "CoCa-style appended class tokens are not supported"
    if getattr(parts, "use_pad_mask", False):
        return "bidirectional text towers with padding masks are not supported"
    if not all(type(b) is ResidualAttentionBlock for b in transformer.resblocks):
        return "custom text attention blocks are not supported"
    return None
