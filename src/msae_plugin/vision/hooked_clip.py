"""``HookedOpenCLIP``: an OpenCLIP CLIP model as a TransformerLens ``HookedRootModule``.

The wrapper *composes* the OpenCLIP model (``self.clip``, a registered child, so ``.to()``,
``state_dict`` and gradients work as usual) and runs its own forward over OpenCLIP's modules,
adding TransformerLens hook points. No weight is copied, so the hooked model can never drift
from ``model.clip``: the test suite checks ``encode_image`` / ``encode_text`` parity to 1e-5.

Hook names: the image tower uses TransformerLens's vocabulary at the top level (``hook_embed``,
``blocks.{i}.hook_resid_post``, ``blocks.{i}.attn.hook_z``, ..., ``hook_ln_post``,
``hook_image_embed``); the text tower the same vocabulary under ``text.`` (``text.blocks.{i}.*``,
``text.hook_ln_final``, ``text.hook_text_embed``). See docs/vision-hooks.md for the table.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from msae_plugin.errors import ModelInputError, UnknownHookError, UnsupportedModelError
from msae_plugin.vision.components import HookedBlock
from msae_plugin.vision.hook_names import check_names, tower_of
from msae_plugin.vision.images import check_images, preprocess
from msae_plugin.vision.splicing import SAESplicingMixin
from msae_plugin.vision.support import check_text_tower, check_vision_tower
from msae_plugin.vision.text_tower import HookedTextTower

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class HookedCLIPConfig:
    """Shape facts a user (or an SAE's metadata) needs; derived from the wrapped model."""

    model_name: str
    pretrained: str | None
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    grid_size: tuple[int, int]
    n_ctx: int  # tokens per image: 1 class token + grid patches
    n_prefix_tokens: int
    output_dim: int
    pool_type: str
    act_fn: str
    layer_scale: bool
    text_n_layers: int | None
    text_d_model: int | None
    text_context_length: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text_parts(clip: nn.Module) -> tuple[nn.Module | None, str, int | None]:
    """The object holding the text transformer attributes, its pool type and eos id."""
    text = getattr(clip, "text", None)
    if text is not None:
        return text, getattr(text, "pool_type", "argmax"), getattr(text, "eos_id", None)
    if hasattr(clip, "token_embedding"):
        return clip, getattr(clip, "text_pool_type", "argmax"), getattr(clip, "text_eos_id", None)
    return None, "argmax", None


class HookedOpenCLIP(SAESplicingMixin, HookedRootModule):
    """An OpenCLIP ``CLIP`` / ``CustomTextCLIP`` with TransformerLens hook points on both towers.

    Build from an existing model (``HookedOpenCLIP(open_clip.create_model("ViT-B-32"))``) or by
    name (:meth:`from_pretrained`, which also knows the embedded ``"msae-tiny-clip"``).
    ``forward`` takes images (float ``[B, 3, H, W]``) or tokens (int ``[B, seq]``) and returns the
    tower's embedding, exactly as ``encode_image`` / ``encode_text`` do.
    """

    def __init__(
        self,
        clip: nn.Module,
        model_name: str = "custom",
        pretrained: str | None = None,
        tokenizer: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        visual = getattr(clip, "visual", None)
        if visual is None:
            raise UnsupportedModelError(
                f"{type(clip).__name__} has no `.visual` image tower; pass an open_clip CLIP model "
                "(open_clip.create_model(...))"
            )
        check_vision_tower(visual)
        self.clip = clip
        self.model_name = model_name
        self.pretrained = pretrained
        self._tokenizer = tokenizer

        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(HookedBlock(b) for b in visual.transformer.resblocks)
        self.hook_ln_post = HookPoint()
        self.hook_image_embed = HookPoint()
        # MaPLe-style deep visual prompt tokens (see set_visual_prompts); None = the plain model.
        self.visual_prompts: nn.Module | None = None

        parts, pool_type, eos_id = _text_parts(clip)
        self.text_unsupported_reason = (
            "the model has no text tower" if parts is None else check_text_tower(parts)
        )
        self.text = (
            HookedTextTower(parts, pool_type, eos_id)
            if self.text_unsupported_reason is None
            else None
        )
        self.cfg = self._build_cfg()
        self._init_splicing()
        self.setup()

    # ------------------------------------------------------------------ construction
    def _build_cfg(self) -> HookedCLIPConfig:
        v = self.clip.visual
        blk = v.transformer.resblocks[0]
        n_heads = blk.attn.num_heads
        return HookedCLIPConfig(
            model_name=self.model_name,
            pretrained=self.pretrained,
            n_layers=len(self.blocks),
            d_model=v.transformer.width,
            n_heads=n_heads,
            d_head=v.transformer.width // n_heads,
            d_mlp=blk.mlp.c_fc.out_features,
            image_size=tuple(v.image_size),
            patch_size=tuple(v.patch_size),
            grid_size=tuple(v.grid_size),
            n_ctx=v.grid_size[0] * v.grid_size[1] + 1,
            n_prefix_tokens=1,
            output_dim=v.output_dim,
            pool_type=v.pool_type,
            act_fn=type(blk.mlp.gelu).__name__,
            layer_scale=not isinstance(blk.ls_1, nn.Identity),
            text_n_layers=len(self.text.blocks) if self.text is not None else None,
            text_d_model=(
                self.text.borrowed.transformer.width if self.text is not None else None
            ),
            text_context_length=self.text.context_length if self.text is not None else None,
        )

    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        pretrained: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **create_kwargs: Any,
    ) -> HookedOpenCLIP:
        """Load by name: ``"msae-tiny-clip"`` (shipped with this package) or any OpenCLIP model
        name with an optional ``pretrained`` tag / checkpoint path (the real loading path; tags
        need network access to the Hugging Face hub)."""
        from msae_plugin.vision.loading import load_open_clip

        clip, tokenizer, pretrained = load_open_clip(
            model_name, pretrained=pretrained, device=device, **create_kwargs
        )
        model = cls(clip, model_name=model_name, pretrained=pretrained, tokenizer=tokenizer)
        return model.to(device=device, dtype=dtype).eval()

    # ------------------------------------------------------------------ conveniences
    @property
    def tokenizer(self) -> Callable[..., torch.Tensor]:
        """The tokenizer matching the text tower (OpenCLIP's, or the embedded word tokenizer)."""
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return self.clip.visual.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.clip.visual.conv1.weight.dtype

    @property
    def image_mean_std(self) -> tuple[Sequence[float], Sequence[float]]:
        cfg = getattr(self.clip.visual, "preprocess_cfg", None) or {}
        return tuple(cfg.get("mean", OPENAI_MEAN)), tuple(cfg.get("std", OPENAI_STD))

    def preprocess(self, images: Any) -> torch.Tensor:
        """PIL / numpy / uint8 / grey-scale images -> normalised float tensor for this model."""
        mean, std = self.image_mean_std
        x = preprocess(images, self.cfg.image_size, mean, std)
        return x.to(device=self.device, dtype=self.dtype)

    def to_tokens(self, texts: str | list[str]) -> torch.Tensor:
        """Tokenize captions for the text tower (TransformerLens naming)."""
        ctx = self.cfg.text_context_length
        return self.tokenizer(texts, context_length=ctx).to(self.device)

    def hook_names(self, tower: str | None = None) -> list[str]:
        """All hook names (optionally of one tower: ``"image"`` or ``"text"``)."""
        return [n for n in self.hook_dict if tower is None or tower_of(n) == tower]

    # ------------------------------------------------------------------ forward
    @staticmethod
    def tower_for(input: torch.Tensor) -> str:
        """Integer ``[B, seq]`` tensors are tokens (text tower); anything else is images."""
        if isinstance(input, torch.Tensor) and input.dim() == 2 and not input.is_floating_point():
            return "text"
        return "image"

    def forward(
        self,
        input: torch.Tensor,
        *,
        stop_at_layer: int | None = None,
        return_type: str | None = "embed",
    ) -> torch.Tensor | None:
        """Run one tower. ``return_type``: ``"embed"`` (= ``encode_image`` / ``encode_text``),
        ``"normalized"`` (L2-normalised embedding) or ``None`` (for activation extraction).
        With ``stop_at_layer=L`` only blocks ``0..L-1`` run and the residual stream after them
        is returned (TransformerLens semantics, negative values count from the end)."""
        if return_type not in ("embed", "normalized", None):
            raise ModelInputError(
                f"return_type must be 'embed', 'normalized' or None, got {return_type!r}"
            )
        self.check_stop_at_layer(stop_at_layer, self.tower_for(input))
        with self._sae_token_masks(input):
            if self.tower_for(input) == "text":
                if self.text is None:
                    raise UnsupportedModelError(
                        f"cannot run the text tower: {self.text_unsupported_reason}"
                    )
                out = self.text(input, stop_at_layer=stop_at_layer)
            else:
                out = self._forward_image(input, stop_at_layer)
        if stop_at_layer is not None or return_type == "embed":
            return out
        if return_type is None:
            return None
        return F.normalize(out, dim=-1)

    def _forward_image(self, images: torch.Tensor, stop_at_layer: int | None) -> torch.Tensor:
        v = self.clip.visual
        check_images(images, self.cfg.image_size)
        x = v.conv1(images.to(self.dtype))
        b, width = x.shape[:2]
        x = self.hook_embed(x.reshape(b, width, -1).permute(0, 2, 1))
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.hook_pos_embed(v.positional_embedding.to(x.dtype).unsqueeze(0).expand(b, -1, -1))
        x = v.patch_dropout(x)
        prompts = self.visual_prompts
        if prompts is not None:  # appended after the patch tokens, after the positional embedding
            x = prompts.append(x)
        x = v.ln_pre(x)
        blocks = self.blocks if stop_at_layer is None else self.blocks[:stop_at_layer]
        for i, block in enumerate(blocks):
            if prompts is not None:  # deep prompts: replaced before each of the first `depth` blocks
                x = prompts.before_block(i, x)
            x = block(x)
        if stop_at_layer is not None:
            return x
        if v.final_ln_after_pool:
            pooled, _ = v._global_pool(x)
            pooled = self.hook_ln_post(v.ln_post(pooled))
        else:
            x = self.hook_ln_post(v.ln_post(x))
            pooled, _ = v._global_pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return self.hook_image_embed(pooled)

    def set_visual_prompts(self, prompts: nn.Module | None) -> HookedOpenCLIP:
        """Carry visual prompt tokens (``msae_plugin.adaptation.VisualPrompts``) or drop them (None).

        The prompts are appended after the patch tokens and replaced before each of their first
        ``depth`` blocks, so every ``blocks.{i}.*`` image hook (and ``hook_ln_post``) gains
        ``prompts.n_ctx`` positions at the end; ``hook_embed`` / ``hook_pos_embed`` keep the
        plain token count. The module checks that it fits this model (width, depth, CLS pooling).
        """
        if prompts is not None:
            for attr in ("append", "before_block", "check_fits"):
                if not callable(getattr(prompts, attr, None)):
                    raise ModelInputError(
                        f"visual prompts must provide append/before_block/check_fits (use "
                        f"msae_plugin.adaptation.VisualPrompts), got {type(prompts).__name__}"
                    )
            prompts.check_fits(self)
            prompts = prompts.to(device=self.device)
        self.visual_prompts = prompts
        return self

    @property
    def n_prompt_tokens(self) -> int:
        """Visual prompt positions at the end of every block's residual stream (0 = none)."""
        return 0 if self.visual_prompts is None else int(self.visual_prompts.n_ctx)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Hooked equivalent of ``open_clip``'s ``encode_image``."""
        return self(images, return_type="normalized" if normalize else "embed")

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Hooked equivalent of ``open_clip``'s ``encode_text``."""
        if self.tower_for(tokens) != "text":
            raise UnknownHookError("encode_text expects integer tokens [batch, seq]")
        return self(tokens, return_type="normalized" if normalize else "embed")

    def zero_shot_logits(
        self, images: torch.Tensor, classifier: torch.Tensor, scale: float | None = None
    ) -> torch.Tensor:
        """``scale * normalize(image_embed) @ classifier.T`` with the model's logit scale by
        default. ``classifier`` holds one L2-normalised text embedding per class."""
        if scale is None:
            scale = self.logit_scale()
        feats = self.encode_image(images, normalize=True)
        return scale * feats @ classifier.to(feats.dtype).T

    def logit_scale(self) -> float:
        """The CLIP model's learned logit scale (``exp`` of the parameter), 100 if it has none."""
        param = getattr(self.clip, "logit_scale", None)
        return float(param.detach().exp()) if param is not None else 100.0

    # ------------------------------------------------------------------ hook-name checks
    def _n_layers(self) -> dict[str, int]:
        return {"image": self.cfg.n_layers, "text": self.cfg.text_n_layers or 0}

    def check_stop_at_layer(self, stop_at_layer: Any, tower: str | None) -> None:
        """Raise :class:`ModelInputError` unless ``stop_at_layer`` is ``None`` or an int in
        ``-n_layers..n_layers`` of ``tower``.

        Python slicing (``blocks[:L]``) would otherwise clip silently: ``10`` on a 4-block tower
        ran every block and ``-10`` none, returning activations from a layer nobody asked for."""
        if stop_at_layer is None or tower is None or (tower == "text" and self.text is None):
            return  # (a missing text tower gets its own error when the tower runs)
        n = self._n_layers()[tower]
        what = f"the {tower} tower's {n} blocks"
        if isinstance(stop_at_layer, bool) or not isinstance(stop_at_layer, numbers.Integral):
            raise ModelInputError(
                f"stop_at_layer must be an int or None, got {type(stop_at_layer).__name__} "
                f"{stop_at_layer!r}; pass an int in -{n}..{n} for {what}"
            )
        if not -n <= stop_at_layer <= n:
            raise ModelInputError(
                f"stop_at_layer={stop_at_layer} is out of range for {what}: use an int in "
                f"-{n}..{n} (L runs blocks 0..L-1, negative values count from the end, {n} runs "
                "every block and returns the last residual stream) or None for the whole tower"
            )

    def _check_run_names(self, names: Any, model_args: tuple, model_kwargs: dict) -> None:
        if names is None or callable(names):
            return
        names = [names] if isinstance(names, str) else list(names)
        tower = self.tower_for(model_args[0]) if model_args else None
        self.check_stop_at_layer(model_kwargs.get("stop_at_layer"), tower)
        check_names(
            names,
            self.hook_dict,
            tower=tower,
            stop_at_layer=model_kwargs.get("stop_at_layer"),
            n_layers=self._n_layers(),
        )

    def run_with_cache(  # type: ignore[override]
        self,
        *model_args: Any,
        names_filter: Any = None,
        return_cache_object: bool = False,
        **kwargs: Any,
    ):
        """TransformerLens ``run_with_cache`` that refuses hook names which would never fire.

        Returns ``(output, dict)`` as ``HookedRootModule`` does, or an ``ActivationCache`` with
        ``return_cache_object=True`` (what SAELens's ``run_with_cache_with_saes`` asks for)."""
        model_kwargs = {k: v for k, v in kwargs.items() if k == "stop_at_layer"}
        self._check_run_names(names_filter, model_args, model_kwargs)
        out, cache = super().run_with_cache(*model_args, names_filter=names_filter, **kwargs)
        if return_cache_object:
            from transformer_lens import ActivationCache

            cache = ActivationCache(cache, self, has_batch_dim=not kwargs.get("remove_batch_dim"))
        return out, cache

    def run_with_hooks(  # type: ignore[override]
        self,
        *model_args: Any,
        fwd_hooks: list = [],  # noqa: B006 (TransformerLens signature)
        bwd_hooks: list = [],  # noqa: B006
        **kwargs: Any,
    ):
        """TransformerLens ``run_with_hooks`` that refuses hook names which would never fire."""
        names = [n for n, _ in list(fwd_hooks) + list(bwd_hooks) if isinstance(n, str)]
        model_kwargs = {k: v for k, v in kwargs.items() if k == "stop_at_layer"}
        self._check_run_names(names, model_args, model_kwargs)
        return super().run_with_hooks(
            *model_args, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, **kwargs
        )

    def _enable_hook(self, name: Any, hook: Any, dir: Any) -> None:  # type: ignore[override]
        if isinstance(name, str):
            check_names([name], self.hook_dict)
        super()._enable_hook(name, hook, dir)

    def add_hook(self, name: Any, hook: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if isinstance(name, str):
            check_names([name], self.hook_dict)
        super().add_hook(name, hook, *args, **kwargs)
