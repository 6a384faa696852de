"""Reading an SAE's activations on an image set for the dashboard: the hook activations, the
codes, and per-latent statistics gathered in streaming passes (memory O(n_images x d_sae), not
O(tokens x d_sae)).

Conventions (shown on the page, see docs/dashboard.md):

* **image score** of latent j on an image = the **mean over the image's tokens** of its code
  (PatchSAE's convention, the same one :mod:`msae_plugin.concepts.naming` ranks images by, so a
  card's top images are the images its name was read from). SAEs on a pooled hook
  (``hook_image_embed``) have one token per image: the score is the code itself.
* **density per token** counts every token of the hook (CLS included); **density per image**
  counts images with at least one firing token.
* **heat maps** are the codes on the patch tokens (prefix tokens such as CLS dropped), one grid
  per shown example; one colour scale per card (its largest patch value).
* codes come from ``sae.encode`` (an MSAE without ``default_k``: its ReLU path, all latents; pass
  ``k`` to read the codes at one ladder level instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from msae_plugin.errors import DashboardError
from msae_plugin.names import suggest


@dataclass
class HookActivations:
    """The SAE's inputs on every image: ``acts`` ``[n, tokens, d_in]`` (``tokens`` = 1 for a
    pooled hook) and the unit CLIP image embeddings ``emb`` ``[n, D]``."""

    acts: torch.Tensor
    emb: torch.Tensor
    pooled: bool  # one value per image (embedding hook): no heat maps
    n_prefix: int  # leading non-patch tokens (CLS)
    grid: tuple[int, int] | None


def hook_of(sae: Any) -> str:
    return str(getattr(sae.cfg.metadata, "hook_name", None) or "")


def check_sae_on_model(sae: Any, model: Any) -> str:
    """The SAE's hook, checked to exist on ``model`` (nearest names otherwise)."""
    hook = hook_of(sae)
    if not hook:
        raise DashboardError(
            "the SAE's cfg.metadata.hook_name is empty, so it is not known where the SAE reads "
            "the model; set sae.cfg.metadata.hook_name (e.g. 'blocks.2.hook_resid_post')."
        )
    if hook.startswith("text."):
        raise DashboardError(
            f"the SAE reads the text tower ({hook!r}); the dashboard shows images. Use an SAE "
            "on an image-tower hook (e.g. hook_image_embed or blocks.N.hook_resid_post)."
        )
    if hook not in model.hook_dict:
        raise DashboardError(
            f"the model has no hook {hook!r} (the SAE's cfg.metadata.hook_name).{suggest(hook, model.hook_dict)} "
            "Load the model the SAE was trained on (cfg.metadata.model_name), or fix the hook name."
        )
    if "attn.hook_pattern" in hook or "attn.hook_attn_scores" in hook:
        raise DashboardError(f"{hook!r} holds attention scores, not activations an SAE reads.")
    return hook


@torch.no_grad()
def read_hook(model: Any, sae: Any, images: torch.Tensor, batch_size: int = 256) -> HookActivations:
    """Run ``model`` on preprocessed ``images`` and keep the SAE's hook activations."""
    from msae_plugin.vision.hook_names import block_of

    hook = check_sae_on_model(sae, model)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DashboardError(
            f"the image set is empty or not a batch [n, 3, H, W] (got {shape}); pass at least "
            "one image, preprocessed with model.preprocess(...)."
        )
    acts, embs = [], []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        emb, cache = model.run_with_cache(batch, names_filter=[hook])
        a = cache[hook]
        if a.dim() == 4:  # attention q/k/v/z: heads flattened, as SAELens does
            a = a.flatten(-2)
        if a.dim() == 2:
            a = a[:, None]
        acts.append(a.float().cpu())
        embs.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
    x = torch.cat(acts)
    if x.shape[-1] != sae.cfg.d_in:
        raise DashboardError(
            f"the SAE has d_in={sae.cfg.d_in} but {hook!r} of this model is {x.shape[-1]} wide; "
            "the SAE was trained on another model or hook. Load its model "
            f"(cfg.metadata.model_name={getattr(sae.cfg.metadata, 'model_name', None)!r})."
        )
    pooled = x.shape[1] == 1 and block_of(hook) is None
    n_prefix = int(getattr(model.cfg, "n_prefix_tokens", 1))
    grid = None if pooled else tuple(model.cfg.grid_size)
    if grid is not None and x.shape[1] != n_prefix + grid[0] * grid[1]:
        grid = None  # a hook whose tokens are not the patch grid (no heat maps then)
    return HookActivations(x, torch.cat(embs), pooled, n_prefix, grid)


def encode(sae: Any, x: torch.Tensor, k: int | None) -> torch.Tensor:
    """Codes of ``x`` ``[..., d_in]`` as float on CPU (see module: MSAE ReLU path by default)."""
    x = x.to(sae.device, sae.dtype)
    if getattr(sae.cfg, "ladder", None):
        return sae.encode(x, k=k if k is not None else sae.cfg.d_sae).float().cpu()
    return sae.encode(x).float().cpu()


@dataclass
class LatentStats:
    """Per-latent statistics over the image set (see module for the conventions)."""

    score: torch.Tensor  # [n_images, d_sae] image score (mean over tokens)
    max: torch.Tensor  # [d_sae] max code over all tokens
    fires_image: torch.Tensor  # [d_sae] images with a firing token
    fires_token: torch.Tensor  # [d_sae] firing tokens
    active_sum: torch.Tensor  # [d_sae] sum of codes over firing tokens
    n_images: int
    n_tokens: int

    @property
    def freq_image(self) -> torch.Tensor:
        return self.fires_image / self.n_images

    @property
    def freq_token(self) -> torch.Tensor:
        return self.fires_token / self.n_tokens

    @property
    def mean_active(self) -> torch.Tensor:
        return self.active_sum / self.fires_token.clamp(min=1)


@torch.no_grad()
def latent_stats(sae: Any, hook: HookActivations, k: int | None, batch_images: int = 64,
                 progress: Any = None) -> LatentStats:
    """First pass: image scores, max, densities and mean-when-active of every latent."""
    n, t, _ = hook.acts.shape
    d_sae = sae.cfg.d_sae
    score = torch.empty(n, d_sae)
    mx = torch.zeros(d_sae)
    fires_image = torch.zeros(d_sae)
    fires_token = torch.zeros(d_sae)
    active_sum = torch.zeros(d_sae, dtype=torch.float64)
    for i in range(0, n, batch_images):
        z = encode(sae, hook.acts[i:i + batch_images], k)  # [b, t, d_sae]
        if not torch.isfinite(z).all():
            raise DashboardError("the SAE produced non-finite codes on these images; check "
                                 "its weights with `msae check SAE_DIR`.")
        score[i:i + len(z)] = z.mean(1)
        mx = torch.maximum(mx, z.amax((0, 1)))
        on = z > 0
        fires_image += on.any(1).sum(0)
        fires_token += on.sum((0, 1))
        active_sum += z.sum((0, 1)).double()
        if progress is not None:
            progress.update(len(z))
    return LatentStats(score, mx, fires_image, fires_token, active_sum.float(), n, n * t)


@torch.no_grad()
def histograms_and_heat(
    sae: Any,
    hook: HookActivations,
    k: int | None,
    lat_max: torch.Tensor,
    pairs: torch.Tensor,
    bins: int = 50,
    batch_images: int = 64,
    progress: Any = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Second pass: per latent a histogram of its non-zero token codes (``bins`` equal-width
    bins over ``(0, max]``) and, for each (image, latent) row of ``pairs`` ``[P, 2]``, the codes
    on the patch grid ``[P, gh*gw]`` (``None`` without a grid)."""
    n = hook.acts.shape[0]
    d_sae = sae.cfg.d_sae
    counts = torch.zeros(d_sae * bins, dtype=torch.long)
    heat = None if hook.grid is None else torch.zeros(len(pairs), hook.grid[0] * hook.grid[1])
    width = torch.where(lat_max > 0, lat_max / bins, torch.ones_like(lat_max))
    order = torch.argsort(pairs[:, 0]) if len(pairs) else torch.zeros(0, dtype=torch.long)
    sorted_img = pairs[order, 0] if len(pairs) else torch.zeros(0, dtype=torch.long)
    for i in range(0, n, batch_images):
        z = encode(sae, hook.acts[i:i + batch_images], k)
        rows, cols = (z.reshape(-1, d_sae) > 0).nonzero(as_tuple=True)
        vals = z.reshape(-1, d_sae)[rows, cols]
        b = (vals / width[cols]).long().clamp(0, bins - 1)
        counts += torch.bincount(cols * bins + b, minlength=d_sae * bins)
        if heat is not None and len(pairs):
            lo = torch.searchsorted(sorted_img, i)
            hi = torch.searchsorted(sorted_img, i + len(z))
            sel = order[lo:hi]
            if len(sel):
                img, lat = pairs[sel, 0] - i, pairs[sel, 1]
                heat[sel] = z[img, hook.n_prefix:, lat]  # [P, patches]
        if progress is not None:
            progress.update(len(z))
    return counts.view(d_sae, bins), heat
