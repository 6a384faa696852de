"""Naming SAE latents with words of a vocabulary (MSAE paper §4), for any SAE on a CLIP model.

Two paths behind :func:`name_concepts`:

* **direction** (SAEs on an embedding hook: ``hook_image_embed``, ``text.hook_text_embed``):
  the latent's decoder row mapped back to CLIP space by the SAE's own de-standardisation is
  ``W_dec[j] / input_scale`` — the direction the latent adds to the reconstruction
  (``decode`` is ``(z @ W_dec + b_dec) / s + μ``; ``μ`` and ``b_dec`` are offsets shared by every
  latent, not part of any latent's direction, so they are left out). Its cosine against the
  text embeddings of the vocabulary names it.
* **activation** (any hook: residual stream, patches): the latent's top-activating images, by
  image-level activation = the **mean over the image's tokens** (PatchSAE's convention,
  ``vision.steering.image_latent_means``), give a mean image embedding; minus the mean embedding
  of all images (so that it is a direction, like the decoder rows), it is matched against the
  same vocabulary.

Validity rule (the paper's code leaves it open): a name is *valid* when the best cosine is at
least ``min_score`` (0.5) AND beats the second word by at least ``min_margin`` (0.1). Both
thresholds were chosen on the embedded model, where latents passing them were selective for
their colour / digit in ground truth (docs/concepts.md gives the figures); on other models they
are a starting point, not a law.

MSAE adds the ladder: for each latent, the smallest ladder k at which TopK-k selects it on at
least half of its top-activating inputs (``min_level``), so one can read whether coarse concepts
live at small k, and the valid-concept ratio per ladder level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from msae_plugin.concepts.vocabulary import DEFAULT_TEMPLATE, text_embeddings
from msae_plugin.errors import ConceptNamingError, UnknownConceptError
from msae_plugin.names import suggest

#: hooks whose activations live in CLIP's joint image-text space
EMBEDDING_HOOKS = ("hook_image_embed", "text.hook_text_embed")
MIN_SCORE = 0.5
MIN_MARGIN = 0.1


@dataclass
class LatentName:
    """One latent's name: best word, its cosine, the margin to the runner-up, validity."""

    latent: int
    word: str
    score: float
    second: str
    margin: float
    valid: bool
    min_level: int | None  # smallest ladder k selecting it on its top inputs (MSAE only)
    alive: bool  # fired on at least one of the inputs looked at


@dataclass
class ConceptNames:
    """The result of :func:`name_concepts`; ``to_dict()`` is what ``msae concepts`` writes."""

    method: str
    hook_name: str
    vocabulary: list[str]
    latents: list[LatentName]
    ladder: list[int] | None
    rule: dict[str, float] = field(default_factory=dict)

    def valid(self) -> list[LatentName]:
        return [x for x in self.latents if x.valid]

    def latents_named(self, name: str) -> list[int]:
        """Latents validly named ``name``; an unknown name raises with the nearest names."""
        hits = [x.latent for x in self.latents if x.valid and x.word == name]
        if hits:
            return hits
        named = sorted({x.word for x in self.valid()})
        near = suggest(name, named)
        if name in self.vocabulary:
            raise UnknownConceptError(
                f"no latent is validly named {name!r} (the word is in the vocabulary, but no "
                f"latent passed the validity rule with it).{near} Valid names: {named}"
            )
        raise UnknownConceptError(
            f"concept {name!r} is not in the vocabulary.{near or ''} Valid names: {named}; "
            "or pass a latent id."
        )

    def level_ratios(self) -> list[dict[str, Any]]:
        """Per ladder level: latents whose ``min_level`` is that k, how many are valid, ratio."""
        if not self.ladder:
            return []
        rows = []
        for k in self.ladder:
            group = [x for x in self.latents if x.min_level == k]
            n_valid = sum(x.valid for x in group)
            rows.append({"k": k, "n_latents": len(group), "n_valid": n_valid,
                         "valid_ratio": n_valid / len(group) if group else None})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "hook_name": self.hook_name, "rule": self.rule,
                "ladder": self.ladder, "vocabulary": self.vocabulary,
                "level_ratios": self.level_ratios(),
                "latents": [asdict(x) for x in self.latents]}


def _hook_of(sae: Any) -> str:
    return str(getattr(sae.cfg.metadata, "hook_name", None) or "")


def _ladder(sae: Any) -> list[int] | None:
    ladder = getattr(sae.cfg, "ladder", None)
    return list(ladder) if ladder else None


def _relu_codes(sae: Any, x: torch.Tensor) -> torch.Tensor:
    """Codes without TopK (the MSAE's ReLU path, whatever its ``default_k``); other SAEs: encode."""
    x = x.to(sae.dtype)
    if _ladder(sae) is not None:
        return sae.encode(x, k=sae.cfg.d_sae)
    return sae.encode(x)


def decoder_directions(sae: Any) -> torch.Tensor:
    """``[d_sae, d_in]`` unit directions each latent adds to the reconstruction in the caller's
    space: ``W_dec / input_scale`` (MSAE's standardisation; SAEs without it: ``W_dec``)."""
    w = sae.W_dec.detach().float()
    scale = getattr(sae, "input_scale", None)
    if scale is not None:
        w = w / scale.detach().float()
    return F.normalize(w, dim=-1).cpu()


@torch.no_grad()
def level_shares(sae: Any, inputs: torch.Tensor, top_idx: torch.Tensor,
                 chunk: int = 256) -> torch.Tensor | None:
    """``[len(ladder), d_sae]``: per ladder k, the share of latent j's top inputs
    ``inputs[top_idx[j]]`` on which TopK at k selects j. ``None`` without a ladder.

    ``inputs``: ``[n, d_in]`` or ``[n, tokens, d_in]``; with tokens, an input counts as selected
    when j is selected at **its strongest token** on that image (largest pre-activation of j).
    Why not "at any token": that needs every latent's rank on every token of every top image
    (a full sort of ``tokens x top x d_sae`` rows, minutes at d_sae = 4096); the strongest token is
    where the latent means what it means on that image, and it needs one rank per (image,
    latent). Selection follows the MSAE's own TopK rule: ``pre_j > 0`` and fewer than ``k``
    latents with a larger ``pre·‖W_dec‖`` (``activate``); a test checks it against
    ``sae.encode(x, k)``. Why a share and not a yes/no: it shows how a latent enters the
    hierarchy (the dashboard plots it per k)."""
    ladder = _ladder(sae)
    if ladder is None:
        return None
    d_sae, n_top = top_idx.shape
    ks = torch.tensor(ladder)
    rank_scale = sae.W_dec.detach().norm(dim=-1).float()
    out = torch.zeros(len(ladder), d_sae)
    for c in range(0, d_sae, chunk):
        lat = torch.arange(c, min(c + chunk, d_sae))
        x = inputs[top_idx[lat]].to(sae.device, sae.dtype)  # [m, top, (tokens,) d_in]
        if x.dim() == 4:  # strongest token of each (image, latent)
            pre_j = torch.einsum("mtsd,md->mts", sae.process_sae_in(x).float(),
                                 sae.W_enc[:, lat].T.float()) + sae.b_enc[lat].float()[:, None, None]
            best = pre_j.argmax(-1)  # [m, top]
            x = x.gather(2, best[..., None, None].expand(-1, -1, 1, x.shape[-1])).squeeze(2)
        pre = sae.hidden_pre_from(x.reshape(-1, x.shape[-1])).float()  # [m*top, d_sae]
        own = lat.repeat_interleave(n_top)
        mine = pre[torch.arange(len(pre)), own]
        score = pre * rank_scale
        rank = (score > score[torch.arange(len(pre)), own][:, None]).sum(-1)  # [m*top]
        sel = (mine > 0)[None] & (rank[None] < ks[:, None])  # [L, m*top]
        out[:, lat] = sel.view(len(ladder), len(lat), n_top).float().mean(-1)
    return out


def levels_from_shares(shares: torch.Tensor | None, ladder: list[int] | None,
                       d_sae: int) -> list[int | None]:
    """Per latent the smallest k whose share (:func:`level_shares`) is at least one half."""
    result: list[int | None] = [None] * d_sae
    if shares is None or ladder is None:
        return result
    reached = shares >= 0.5  # [L, d_sae]
    first = torch.where(reached.any(0), reached.float().argmax(0), -1)
    return [ladder[int(i)] if i >= 0 else None for i in first]


def min_levels(sae: Any, inputs: torch.Tensor, top_idx: torch.Tensor) -> list[int | None]:
    """Per latent j, the smallest ladder k whose TopK selects j on at least half of its top
    inputs ``inputs[top_idx[j]]``. ``None`` for non-MSAE SAEs or latents never selected."""
    return levels_from_shares(level_shares(sae, inputs, top_idx), _ladder(sae), top_idx.shape[0])


def activation_directions(emb: torch.Tensor, top_idx: torch.Tensor) -> torch.Tensor:
    """``[d_sae, D]`` activation-based concept directions: the mean unit image embedding of each
    latent's top images minus the mean over all images (what the images share beyond CLIP's
    common component), normalised. ``emb``: ``[n, D]`` unit embeddings."""
    return F.normalize(emb[top_idx].mean(1) - emb.mean(0), dim=-1)


def name_latents(
    directions: torch.Tensor,
    text: torch.Tensor,
    vocabulary: list[str],
    alive: list[bool],
    levels: list[int | None],
    min_score: float = MIN_SCORE,
    min_margin: float = MIN_MARGIN,
) -> list[LatentName]:
    """One :class:`LatentName` per direction: best word, runner-up, margin and the validity
    rule (alive, score >= ``min_score``, margin >= ``min_margin``)."""
    latents = []
    for j, (word, score, second, margin) in enumerate(_match(directions, text, vocabulary)):
        valid = alive[j] and score >= min_score and margin >= min_margin
        latents.append(LatentName(j, word, score, second, margin, bool(valid), levels[j],
                                  bool(alive[j])))
    return latents


def top_words(directions: torch.Tensor, text: torch.Tensor, vocabulary: list[str],
              n: int = 5) -> list[list[tuple[str, float]]]:
    """Per direction the ``n`` vocabulary words of highest cosine, best first."""
    top = (directions @ text.T).topk(min(n, len(vocabulary)), dim=-1)
    return [[(vocabulary[int(i)], float(v)) for v, i in zip(vs, ix, strict=True)]
            for vs, ix in zip(top.values, top.indices, strict=True)]


def _match(directions: torch.Tensor, text: torch.Tensor, words: list[str]) -> list[tuple]:
    cos = directions @ text.T
    if len(words) == 1:
        return [(words[0], float(c[0]), "", float(c[0])) for c in cos]
    top = cos.topk(2, dim=-1)
    return [(words[int(i[0])], float(v[0]), words[int(i[1])], float(v[0] - v[1]))
            for v, i in zip(top.values, top.indices, strict=True)]


@torch.no_grad()
def name_concepts(
    sae: Any,
    model: Any,
    vocabulary: list[str],
    images: torch.Tensor | None = None,
    method: str = "auto",
    top_n: int = 16,
    template: str = DEFAULT_TEMPLATE,
    min_score: float = MIN_SCORE,
    min_margin: float = MIN_MARGIN,
) -> ConceptNames:
    """Name every latent of ``sae`` (any SAELens SAE with ``cfg.metadata.hook_name`` on
    ``model``, a ``HookedOpenCLIP``) with a word of ``vocabulary``.

    ``method``: ``"direction"``, ``"activation"`` or ``"auto"`` (direction on an embedding hook,
    activation elsewhere). ``images`` (preprocessed, ``[n, 3, H, W]``) are needed by the
    activation path and by ``min_level``; ``top_n`` is how many top-activating images count.
    """
    hook = _hook_of(sae)
    if method == "auto":
        method = "direction" if hook in EMBEDDING_HOOKS else "activation"
    if method not in ("direction", "activation"):
        raise ConceptNamingError(
            f"method must be 'direction', 'activation' or 'auto', got {method!r}."
        )
    if method == "direction" and hook not in EMBEDDING_HOOKS:
        raise ConceptNamingError(
            f"direction-based naming needs an SAE on an embedding hook {EMBEDDING_HOOKS}, but "
            f"this SAE reads {hook!r}: its decoder rows are not in CLIP's text-image space. Use "
            "method='activation' (names from the latent's top-activating images) instead."
        )
    if method == "activation" and hook.startswith("text."):
        raise ConceptNamingError(
            f"activation-based naming ranks images, but this SAE reads the text tower ({hook!r}). "
            "Use method='direction' (text.hook_text_embed) or an SAE on an image-tower hook."
        )
    if images is None and method == "activation":
        raise ConceptNamingError(
            f"activation-based naming of an SAE on {hook!r} needs images: pass images=... "
            "(e.g. model.preprocess(make_digit_scenes(2000, 'test').images))."
        )
    if images is not None and len(images) == 0:
        raise ConceptNamingError("images is empty; pass at least one image.")
    if not isinstance(top_n, int) or top_n < 1:
        raise ConceptNamingError(f"top_n must be a positive integer, got {top_n!r}.")
    text = text_embeddings(model, vocabulary, template)
    d_sae = sae.cfg.d_sae

    levels: list[int | None] = [None] * d_sae
    alive = [True] * d_sae
    directions = decoder_directions(sae)
    if images is not None and not hook.startswith("text."):
        from msae_plugin.vision.hook_names import block_of

        layer = block_of(hook)
        stop = None if layer is None else layer + 1
        acts, embeds = [], []
        for i in range(0, len(images), 256):
            batch = images[i:i + 256]
            _, cache = model.run_with_cache(batch, names_filter=[hook], stop_at_layer=stop)
            a = cache[hook]
            acts.append((a.flatten(-2) if a.dim() == 4 else a).float().cpu())
            embeds.append(model.encode_image(batch).float().cpu())
        inputs, emb = torch.cat(acts), F.normalize(torch.cat(embeds), dim=-1)
        codes = torch.cat([_relu_codes(sae, inputs[i:i + 512]).float().cpu()
                           for i in range(0, len(inputs), 512)])
        if codes.dim() == 3:
            codes = codes.mean(dim=1)  # image level: mean over tokens (PatchSAE)
        n = min(top_n, len(images))
        top_idx = codes.topk(n, dim=0).indices.T  # [d_sae, n]
        alive = (codes > 0).any(0).tolist()
        levels = min_levels(sae, inputs, top_idx)
        if method == "activation":
            directions = activation_directions(emb, top_idx)

    latents = name_latents(directions, text, vocabulary, alive, levels, min_score, min_margin)
    return ConceptNames(method, hook, list(vocabulary), latents, _ladder(sae),
                        {"min_score": min_score, "min_margin": min_margin})
