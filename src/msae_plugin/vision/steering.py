"""Steering a hooked CLIP with SAE latents: ablate, clamp or add latents at a spliced SAE and read
the effect on zero-shot logits.

Edits are ordinary TransformerLens hooks on ``{hook_name}.hook_sae_acts_post`` (the spliced SAE's
latent activations; SAELens's splicing wrapper keeps that path), so they compose with every
other hook. With ``use_error_term=True`` (the default here) the SAE's reconstruction error is
added back, so an *empty* edit leaves the model's output unchanged and any change in the logits
is caused by the edited latents alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

EDIT_MODES = ("ablate", "clamp", "add")


class SteeringError(ValueError):
    """A latent edit or class selection that cannot apply (bad mode, index or position)."""


def _int_list(name: str, values: Sequence[int]) -> list[int]:
    """``values`` as a list of ints; floats and bools are refused (``torch.as_tensor(...,
    dtype=long)`` would truncate 1.5 to 1 silently)."""
    out = list(values)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise SteeringError(f"{name} must be integers, got {out!r}")
    return out


@dataclass(frozen=True)
class LatentEdit:
    """``ablate``: set to 0; ``clamp``: set to ``value``; ``add``: add ``value``.

    ``positions`` (token indices, e.g. ``[0]`` for CLS) restricts the edit; ``None`` = all."""

    latents: Sequence[int]
    mode: str = "ablate"
    value: float = 0.0
    positions: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.mode not in EDIT_MODES:
            raise SteeringError(f"edit mode must be one of {EDIT_MODES}, got {self.mode!r}")
        _int_list("latents", self.latents)
        if self.positions is not None:
            _int_list("positions", self.positions)

    def hook(self, d_sae: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        idx = torch.as_tensor(list(self.latents), dtype=torch.long)
        if idx.numel() and (idx.min() < 0 or idx.max() >= d_sae):
            raise SteeringError(
                f"latent indices must be in [0, {d_sae}), got {list(self.latents)}"
            )

        def edit(acts: torch.Tensor, hook: Any) -> torch.Tensor:
            if self.positions is not None:
                self._check_positions(acts, getattr(hook, "name", None))
            acts = acts.clone()
            sel = acts[..., idx] if self.positions is None else acts[:, self.positions][..., idx]
            if self.mode == "ablate":
                new = torch.zeros_like(sel)
            elif self.mode == "clamp":
                new = torch.full_like(sel, self.value)
            else:
                new = sel + self.value
            if self.positions is None:
                acts[..., idx] = new
            else:
                pos = torch.as_tensor(list(self.positions), dtype=torch.long)
                acts[:, pos.unsqueeze(-1), idx] = new
            return acts

        return edit

    def _check_positions(self, acts: torch.Tensor, name: str | None) -> None:
        """Positions index the token axis: refuse pooled hooks (where they would pick latents)
        and positions beyond the tokens (a raw IndexError inside the forward otherwise)."""
        where = f" at {name!r}" if name else ""
        if acts.dim() < 3:
            raise SteeringError(
                f"LatentEdit positions={list(self.positions or [])} need a token axis, but the "
                f"latents{where} have shape {tuple(acts.shape)} (one vector per input); drop "
                "positions"
            )
        n = acts.shape[1]
        bad = [p for p in self.positions or [] if not -n <= p < n]
        if bad:
            raise SteeringError(
                f"LatentEdit positions {bad} are out of range for {n} tokens{where}; use "
                f"positions in {-n}..{n - 1} (0 is the CLS token)"
            )


def steered_logits(
    model: Any,
    images: torch.Tensor,
    sae: Any,
    classifier: torch.Tensor,
    edits: Sequence[LatentEdit] = (),
    use_error_term: bool = True,
    exclude_cls: bool = False,
) -> torch.Tensor:
    """Zero-shot logits with ``sae`` spliced at its hook and ``edits`` applied to its latents."""
    hook_name = sae.cfg.metadata.hook_name
    fwd = [(f"{hook_name}.hook_sae_acts_post", e.hook(sae.cfg.d_sae)) for e in edits]
    with torch.no_grad(), model.saes(
        saes=[sae], use_error_term=use_error_term, exclude_special_tokens=exclude_cls
    ):
        feats = model.run_with_hooks(images, fwd_hooks=fwd, return_type="normalized")
    return model.logit_scale() * feats @ classifier.to(feats.dtype).T


def image_latent_means(
    model: Any, sae: Any, images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Image-level latent activation (mean over the image's tokens, as in PatchSAE):
    ``[n_images, d_sae]``."""
    hook_name = sae.cfg.metadata.hook_name
    from msae_plugin.vision.hook_names import block_of

    layer = block_of(hook_name)
    stop = None if layer is None else layer + 1
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            _, cache = model.run_with_cache(batch, names_filter=[hook_name], stop_at_layer=stop)
            acts = cache[hook_name]
            if acts.dim() == 4:  # attention q/k/v/z: flatten heads as SAELens does
                acts = acts.flatten(-2)
            latents = sae.encode(acts.to(sae.dtype))
            # pooled hooks (hook_image_embed, hook_ln_post after pooling) have no token axis
            out.append(latents.mean(dim=1) if latents.dim() == 3 else latents)
    return torch.cat(out)


def class_latents(
    latent_means: torch.Tensor, labels: torch.Tensor, target: int, n: int
) -> torch.Tensor:
    """The ``n`` latents whose mean image-level activation most exceeds, on images of class
    ``target``, their mean on the other images."""
    mask = labels == target
    if not mask.any() or mask.all():
        raise SteeringError(
            f"class_latents needs images of class {target} and of other classes; the labels "
            f"hold {sorted(set(labels.tolist()))}"
        )
    if not 0 < n <= latent_means.shape[-1]:
        raise SteeringError(
            f"n={n} latents requested, but the SAE has {latent_means.shape[-1]}; use 1.."
            f"{latent_means.shape[-1]}"
        )
    score = latent_means[mask].mean(0) - latent_means[~mask].mean(0)
    return torch.topk(score, n).indices
