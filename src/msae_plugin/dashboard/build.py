"""Gathering everything a dashboard shows, for any SAELens SAE at a vision hook of a
``HookedOpenCLIP`` (msae and the built-ins), and writing the site.

:func:`collect_dashboard` returns the data (``meta``, one ``card`` per latent, the thumbnails);
:func:`build_dashboard` also writes it with :func:`msae_plugin.dashboard.site.write_site`. The
data layout is documented in ``site.py``; the conventions (image score, densities, intervals,
logit effect) in ``activations.py``, ``examples.py`` and ``effects.py``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from msae_plugin.concepts.naming import (
    EMBEDDING_HOOKS,
    activation_directions,
    decoder_directions,
    level_shares,
    levels_from_shares,
    name_latents,
    top_words,
)
from msae_plugin.concepts.vocabulary import load_vocabulary, text_embeddings
from msae_plugin.dashboard.activations import histograms_and_heat, latent_stats, read_hook
from msae_plugin.dashboard.effects import logit_effects
from msae_plugin.dashboard.examples import graded_examples, top_images
from msae_plugin.dashboard.neighbours import coactivation_neighbours, decoder_neighbours
from msae_plugin.errors import DashboardError

#: a site holds at most this many page files; d_sae / page_size above it is refused
MAX_PAGES = 1024
#: at most this many latents per page file (one script the browser parses at once)
MAX_PAGE_SIZE = 1024
DENSE_THRESHOLD = 0.5
THUMB_MAX = 64
NAMING_TOP = 16  # top images a name is read from (name_concepts' default)


@dataclass
class DashboardData:
    meta: dict[str, Any]
    cards: list[dict[str, Any]]
    thumbs: torch.Tensor  # uint8 [n, H, W, 3], index = ex["img"]
    timings: dict[str, float] = field(default_factory=dict)


def check_page_size(d_sae: int, page_size: int) -> None:
    """Refuse a page size the site cannot hold, saying what to change (cheap; run first)."""
    if not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise DashboardError(
            f"page_size must be an integer in [1, {MAX_PAGE_SIZE}] (latents per data file), got "
            f"{page_size!r}; 64 is a good default."
        )
    pages = -(-d_sae // page_size)
    if pages > MAX_PAGES:
        need = -(-d_sae // MAX_PAGES)
        raise DashboardError(
            f"d_sae={d_sae} at page_size={page_size} needs {pages} data files, more than the "
            f"{MAX_PAGES} a site holds; raise page_size to at least {need} "
            f"(--page-size {need})."
        )


def _thumbnails(model: Any, images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[n, h, w, 3]`` of what the model saw (preprocessed images de-normalised), at most
    ``THUMB_MAX`` pixels a side."""
    mean, std = model.image_mean_std
    x = images.float().cpu() * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(
        1, 3, 1, 1)
    h, w = x.shape[-2:]
    if max(h, w) > THUMB_MAX:
        s = THUMB_MAX / max(h, w)
        x = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="area")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _heat_b64(values: torch.Tensor, heat_max: float) -> str:
    q = (values.clamp(min=0) / heat_max * 255).round().clamp(0, 255).to(torch.uint8)
    return base64.b64encode(q.numpy().tobytes()).decode("ascii")


def _check_labels(labels: Any, n: int, class_names: Sequence[str] | None) -> torch.Tensor | None:
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or len(labels) != n:
        raise DashboardError(
            f"labels must be one class id per image ({n}), got shape {tuple(labels.shape)}."
        )
    if class_names is not None and len(labels) and (
            labels.min() < 0 or labels.max() >= len(class_names)):
        raise DashboardError(
            f"labels must lie in [0, {len(class_names)}) (one per class name), got "
            f"{int(labels.min())}..{int(labels.max())}."
        )
    return labels.long()


@torch.no_grad()
def collect_dashboard(
    sae: Any,
    model: Any,
    images: torch.Tensor,
    *,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    vocabulary: list[str] | None = None,
    k: int | None = None,
    n_top: int = 12,
    n_intervals: int = 5,
    per_interval: int = 4,
    hist_bins: int = 50,
    page_size: int = 64,
    seed: int = 0,
    source: str = "",
    progress: bool = True,
) -> DashboardData:
    """Everything the dashboard shows for ``sae`` on preprocessed ``images`` ``[n, 3, H, W]``.

    ``labels`` (class id per image) and ``class_names`` give the class distribution of the top
    images and the zero-shot logit effects; ``vocabulary`` (default: the shipped caption
    vocabulary) names the latents as :func:`msae_plugin.concepts.name_concepts` does; ``k``
    reads an MSAE at one ladder level instead of its ReLU path."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    check_page_size(sae.cfg.d_sae, page_size)
    if not isinstance(n_top, int) or n_top < 1:
        raise DashboardError(f"n_top must be a positive integer, got {n_top!r}.")
    labels = _check_labels(labels, len(images) if hasattr(images, "__len__") else 0, class_names)
    hook = read_hook(model, sae, images)
    hook_name = str(sae.cfg.metadata.hook_name)
    n, d_sae = len(images), sae.cfg.d_sae
    timings["model"] = time.perf_counter() - t0

    bar = tqdm(total=2 * n, desc="dashboard: encoding", disable=not progress, unit="img")
    stats = latent_stats(sae, hook, k, progress=bar)
    top_v, top_raw = top_images(stats.score, max(n_top, NAMING_TOP))
    top_i = torch.where(top_v > 0, top_raw, -1)  # non-firing images are not "top"
    timings["stats"] = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(seed)
    shown_top = [row[row >= 0][:n_top] for row in top_i]
    intervals = [graded_examples(stats.score[:, j], shown_top[j], n_intervals, per_interval, gen)
                 for j in range(d_sae)]
    pairs = [(int(i), j) for j in range(d_sae) for i in shown_top[j]]
    pairs += [(i, j) for j in range(d_sae) for iv in intervals[j] for i in iv.images]
    pair_t = torch.tensor(pairs, dtype=torch.long).view(-1, 2)
    counts, heat = histograms_and_heat(sae, hook, k, stats.max, pair_t, hist_bins, progress=bar)
    bar.close()
    pair_row = {p: r for r, p in enumerate(pairs)}
    timings["histograms"] = time.perf_counter() - t0

    # names, top words and ladder levels, as name_concepts computes them
    vocabulary = load_vocabulary() if vocabulary is None else vocabulary
    text = text_embeddings(model, vocabulary)
    naming_idx = top_raw[:, :NAMING_TOP]  # as name_concepts ranks them (zeros included)
    if hook_name in EMBEDDING_HOOKS:
        method, directions = "direction", decoder_directions(sae)
    else:
        method, directions = "activation", activation_directions(hook.emb, naming_idx)
    alive = (stats.fires_image > 0).tolist()
    used = naming_idx.unique()
    shares = level_shares(sae, hook.acts[used], torch.searchsorted(used, naming_idx))
    ladder = list(sae.cfg.ladder) if getattr(sae.cfg, "ladder", None) else None
    levels = levels_from_shares(shares, ladder, d_sae)
    names = name_latents(directions, text, vocabulary, alive, levels)
    words = top_words(directions, text, vocabulary, 5)
    timings["names"] = time.perf_counter() - t0

    dec_v, dec_i = decoder_neighbours(decoder_directions(sae))
    co_v, co_i = coactivation_neighbours(stats.score)
    timings["neighbours"] = time.perf_counter() - t0
    effects = None
    if class_names:
        from msae_plugin.embedded.zero_shot import build_zero_shot_classifier

        classifier = build_zero_shot_classifier(model, model.tokenizer, list(class_names))
        effects = logit_effects(model, sae, hook_name, images, classifier, stats.mean_active)
    timings["effects"] = time.perf_counter() - t0

    # thumbnails of the images the cards reference
    referenced = sorted({i for i, _ in pairs})
    sprite = {img: s for s, img in enumerate(referenced)}
    thumbs = _thumbnails(model, images[referenced]) if referenced else torch.zeros(
        0, 1, 1, 3, dtype=torch.uint8)

    def example(img: int, j: int, heat_max: float) -> dict[str, Any]:
        h = None
        if heat is not None and heat_max > 0:
            h = _heat_b64(heat[pair_row[(img, j)]], heat_max)
        return {"img": sprite[img], "v": float(stats.score[img, j]),
                "cls": int(labels[img]) if labels is not None else -1, "heat": h}

    cards = []
    n_classes = len(class_names) if class_names else 0
    for j in range(d_sae):
        rows = [pair_row[(int(i), j)] for i in shown_top[j]]
        rows += [pair_row[(i, j)] for iv in intervals[j] for i in iv.images]
        heat_max = float(heat[rows].max()) if heat is not None and rows else 0.0
        top = [example(int(i), j, heat_max) for i in shown_top[j]]
        class_dist = [0] * n_classes
        for ex in top:
            if 0 <= ex["cls"] < n_classes:
                class_dist[ex["cls"]] += 1
        cards.append({
            "id": j,
            "heat_max": heat_max,
            "hist": {"lo": 0.0, "hi": float(stats.max[j]), "counts": counts[j].tolist()},
            "top": top,
            "intervals": [{"lo": iv.lo, "hi": iv.hi, "contains": iv.contains,
                           "examples": [example(i, j, heat_max) for i in iv.images]}
                          for iv in intervals[j]],
            "words": [[w, s] for w, s in words[j]],
            "near_decoder": [[int(i), float(v)] for v, i in zip(dec_v[j], dec_i[j], strict=True)],
            "near_coact": [[int(i), float(v)] for v, i in zip(co_v[j], co_i[j], strict=True)
                           if v == v],  # NaN (dead) dropped
            "class_dist": class_dist,
            "logit_effect": effects[j].tolist() if effects is not None else [],
            "levels": ([[kk, float(shares[li, j])] for li, kk in enumerate(ladder)]
                       if shares is not None and ladder else None),
        })
    freq_image = stats.freq_image
    flags = ["dead" if not alive[j] else "dense" if float(freq_image[j]) > DENSE_THRESHOLD
             else "" for j in range(d_sae)]
    meta = {
        "title": f"msae dashboard: {sae.cfg.architecture()} at {hook_name}",
        "sae": {"architecture": sae.cfg.architecture(), "hook_name": hook_name,
                "d_in": sae.cfg.d_in, "d_sae": d_sae,
                "model_name": getattr(sae.cfg.metadata, "model_name", None),
                "ladder": ladder, "k": k, "source": source},
        "n_images": n,
        "tokens_per_image": int(hook.acts.shape[1]),
        "grid": list(hook.grid) if hook.grid is not None else None,
        "image_score": ("the latent's value on the image embedding" if hook.pooled
                        else "mean over the image's tokens (CLS included)"),
        "naming": {"method": method, "n_top_images": NAMING_TOP},
        "classes": list(class_names) if class_names else [],
        "page_size": page_size,
        "hist_bins": hist_bins,
        "dense_threshold": DENSE_THRESHOLD,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "latents": {
            "freq_image": freq_image.tolist(),
            "freq_token": stats.freq_token.tolist(),
            "max": stats.max.tolist(),
            "mean_active": stats.mean_active.tolist(),
            "name": [x.word if x.alive else "" for x in names],
            "name_score": [x.score for x in names],
            "name_valid": [x.valid for x in names],
            "level": levels,
            "flag": flags,
        },
    }
    timings["cards"] = time.perf_counter() - t0
    return DashboardData(meta, cards, thumbs, timings)


def build_dashboard(out: str | Path, sae: Any, model: Any, images: torch.Tensor,
                    **kwargs: Any) -> Path:
    """Collect (:func:`collect_dashboard`, same keyword arguments) and write the site to
    ``out``; returns the path of its ``index.html``."""
    from msae_plugin.dashboard.site import check_site_dir, write_site
    from msae_plugin.preflight import ensure_writable_dir

    out = Path(out)  # every check that needs no model runs before the collection
    ensure_writable_dir(out.parent if out.parent != Path("") else Path("."), f"output {out}",
                        "Pass a folder you can write to.")
    check_site_dir(out)
    check_page_size(sae.cfg.d_sae, kwargs.get("page_size", 64))
    data = collect_dashboard(sae, model, images, **kwargs)
    site = write_site(out, data.meta, data.cards, data.thumbs)
    return Path(site) / "index.html" if Path(site).is_dir() else Path(site)
