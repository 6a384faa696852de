"""Image-level features for probes: a hook's activation pooled to one vector per image, or an
SAE's latent code at a chosen k.

Why pooling: the scene properties (digit, colour, rotation, texture) are properties of the whole
image, so each image is one probe sample. Residual-stream hooks carry a CLS token and 64 patch
tokens; ``pool="cls"`` (default) takes the CLS token, the position CLIP itself pools for the
image embedding, and ``pool="mean"`` averages the patch tokens (CLS excluded). ``hook_image_embed``
is already one vector per image. Activations are read with ``run_with_cache(stop_at_layer=...)``
so only the blocks up to the hook run.
"""

from __future__ import annotations

from typing import Any

import torch

from msae_plugin.errors import ProbeInputError
from msae_plugin.names import suggest
from msae_plugin.vision.hook_names import block_of

POOLS = ("cls", "mean")


def _check_hook(model: Any, hook_name: str) -> None:
    names = model.hook_names("image")
    if hook_name not in names:
        raise ProbeInputError(f"unknown image hook {hook_name!r}.{suggest(hook_name, names)} "
                              f"Use one of blocks.0..{model.cfg.n_layers - 1}.hook_resid_post "
                              "or hook_image_embed (model.hook_names('image') lists all)")


def _pool(acts: torch.Tensor, pool: str) -> torch.Tensor:
    if acts.ndim == 2:
        return acts
    if pool == "cls":
        return acts[:, 0]
    return acts[:, 1:].mean(dim=1)


@torch.no_grad()
def hook_activations(model: Any, images: torch.Tensor, hook_names: list[str],
                     batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Raw activations ``{hook: [n, (tokens,) d]}`` of preprocessed ``images`` at every hook,
    from one pass per batch that stops after the deepest block needed."""
    for name in hook_names:
        _check_hook(model, name)
    blocks = [block_of(n) for n in hook_names]
    stop = None if any(b is None for b in blocks) else max(blocks) + 1
    out: dict[str, list[torch.Tensor]] = {n: [] for n in hook_names}
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(model.device)
        _, cache = model.run_with_cache(batch, names_filter=list(hook_names), stop_at_layer=stop)
        for n in hook_names:
            out[n].append(cache[n].detach().float().cpu())
    return {n: torch.cat(v) for n, v in out.items()}


def pooled_features(acts: torch.Tensor, pool: str = "cls") -> torch.Tensor:
    """One vector per image from a hook's activations (see the module docstring for ``pool``)."""
    if pool not in POOLS:
        raise ProbeInputError(f"unknown pool {pool!r}.{suggest(pool, POOLS)} Use 'cls' or "
                              "'mean'")
    return _pool(acts, pool)


@torch.no_grad()
def sae_features(sae: Any, acts: torch.Tensor, k: int | None = None,
                 batch_size: int = 4096) -> torch.Tensor:
    """The SAE's latent code per image at ``k`` (``None``: the ReLU path).

    ``acts`` are the raw activations at the SAE's hook. For an image-level hook the code is one
    row per image; for a token hook the SAE encodes the tokens it was trained on (the patches,
    CLS excluded, for the shipped patch SAE) and the codes are averaged per image.
    """
    if k is not None:
        ladder = list(getattr(sae.cfg, "ladder", []) or [])
        d_sae = int(sae.cfg.d_sae)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
            raise ProbeInputError(f"k={k!r} is not a valid sparsity for this SAE; use an int in "
                                  f"1..{d_sae} (its ladder: {ladder}) or None for the ReLU path")
    n = acts.shape[0]
    tokens = acts if acts.ndim == 2 else acts[:, 1:]
    flat = tokens.reshape(-1, tokens.shape[-1]).to(sae.device, sae.dtype)
    codes = []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        codes.append((sae.encode(chunk, k=k) if k is not None else sae.encode(chunk)).float().cpu())
    z = torch.cat(codes)
    return z if acts.ndim == 2 else z.reshape(n, -1, z.shape[-1]).mean(dim=1)
