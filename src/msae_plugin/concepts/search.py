"""Concept-based similarity search (MSAE paper §5): edit a query embedding along an SAE concept,
then retrieve the nearest images of a gallery by cosine.

Why the edit goes through the error term: ``x' = x + decode(z') - decode(z)`` with ``z`` the
query's code and ``z'`` the edited one. An empty edit then returns the query unchanged (the
search without a concept is the plain CLIP search, not a search on the SAE's reconstruction), so
any change of the results is caused by the concept. For an MSAE the difference is
``(z' - z) @ W_dec / input_scale``: adding ``strength`` to a latent moves the query along the
latent's CLIP-space direction (``naming.decoder_directions``).

Modes: ``"add"`` raises the latents' codes by ``strength`` (code units: compare with the
latent's activations, e.g. ``sae.encode(gallery).max(0)``); ``"remove"`` sets them to zero.
Text queries: :func:`text_query` gives the text embedding of a prompt to search with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from msae_plugin.errors import ConceptSearchError


@dataclass
class SearchResult:
    """Per query: ``indices`` ``[q, top]`` into the gallery and their cosines ``scores``."""

    indices: torch.Tensor
    scores: torch.Tensor
    queries: torch.Tensor  # the edited query embeddings [q, d]


def _codes(sae: Any, x: torch.Tensor) -> torch.Tensor:
    ladder = getattr(sae.cfg, "ladder", None)
    x = x.to(sae.dtype)
    return sae.encode(x, k=sae.cfg.d_sae) if ladder else sae.encode(x)


@torch.no_grad()
def edit_embeddings(
    sae: Any, x: torch.Tensor, latents: list[int], mode: str = "add", strength: float = 1.0
) -> torch.Tensor:
    """Query embeddings ``[q, d_in]`` with the concept's latents added / removed (see module)."""
    if mode not in ("add", "remove"):
        raise ConceptSearchError(f"mode must be 'add' or 'remove', got {mode!r}.")
    bad = [j for j in latents if not isinstance(j, int) or not 0 <= j < sae.cfg.d_sae]
    if bad or not latents:
        raise ConceptSearchError(
            f"latents must be a non-empty list of ids in [0, {sae.cfg.d_sae}), got {latents!r}; "
            "pass latent ids or names.latents_named(word)."
        )
    if x.dim() != 2 or x.shape[-1] != sae.cfg.d_in:
        raise ConceptSearchError(
            f"query embeddings must be [n, {sae.cfg.d_in}] (the SAE's d_in), got "
            f"{tuple(x.shape)}; pass model.encode_image(images) for an SAE on hook_image_embed."
        )
    z = _codes(sae, x)
    z_edit = z.clone()
    if mode == "add":
        z_edit[:, latents] += strength
    else:
        z_edit[:, latents] = 0
    return (x.to(sae.dtype) + sae.decode(z_edit) - sae.decode(z)).float()


@torch.no_grad()
def text_query(model: Any, text: str | list[str]) -> torch.Tensor:
    """``[q, d]`` text embeddings of prompts, to search the image gallery with (CLIP space)."""
    texts = [text] if isinstance(text, str) else list(text)
    device = next(model.parameters()).device
    return model.encode_text(model.tokenizer(texts).to(device)).float().cpu()


@torch.no_grad()
def concept_search(
    sae: Any,
    queries: torch.Tensor,
    gallery: torch.Tensor,
    latents: list[int] | None = None,
    mode: str = "add",
    strength: float = 1.0,
    top: int = 10,
) -> SearchResult:
    """Edit ``queries`` (``[q, d]`` CLIP embeddings) along ``latents`` (none: no edit) and
    return the ``top`` gallery images (``[g, d]`` embeddings) by cosine."""
    if gallery.dim() != 2 or len(gallery) == 0:
        raise ConceptSearchError(
            f"the gallery is empty (shape {tuple(gallery.shape)}); pass the embeddings of at "
            "least one image, e.g. model.encode_image(images)."
        )
    if queries.dim() == 1:
        queries = queries[None]
    if gallery.shape[-1] != queries.shape[-1]:
        raise ConceptSearchError(
            f"gallery embeddings have width {gallery.shape[-1]}, queries {queries.shape[-1]}; "
            "embed both with the same CLIP model."
        )
    if not isinstance(top, int) or top < 1:
        raise ConceptSearchError(f"top must be a positive integer, got {top!r}.")
    q = queries.float() if not latents else edit_embeddings(sae, queries, latents, mode, strength)
    cos = F.normalize(q.cpu(), dim=-1) @ F.normalize(gallery.float().cpu(), dim=-1).T
    best = cos.topk(min(top, len(gallery)), dim=-1)
    return SearchResult(best.indices, best.values, q)
