"""The probe study on the embedded model: every (site × property) cell of a grid of held-out
accuracy, control accuracy and selectivity, as a table and a heat map.

Sites are the residual stream after each block (``blocks.{i}.hook_resid_post``, pooled per
image), ``hook_image_embed``, and MSAE latents at several k (``msae@k``, the shipped
``hook_image_embed`` MSAE unless another SAE is passed). Properties are the labels the scene
generator draws (``msae_plugin.embedded.dataset``); ``texture`` is its ``background`` attribute
(dark vs a textured crop).

Control types: a scene's *source digit*, the handwritten 8x8 sample in ``load_digits`` it was
rendered from (``DigitScenes.source_index``). It is the unit a probe could memorise: scenes of
one source share the glyph's shape, so a representation that keeps sample identity lets a probe
learn "this handwriting -> this label". Every scene of a source gets the same random control
label, for every property (docs/probes.md discusses the choice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from msae_plugin.errors import ProbeInputError
from msae_plugin.names import suggest
from msae_plugin.probes.features import hook_activations, pooled_features, sae_features
from msae_plugin.probes.probe import ProbeResult, probe

DEFAULT_PROPERTIES = ("digit", "colour", "rotation", "texture")
MSAE_RELEASE = "msae-tiny-clip-msae"
DEFAULT_KS = (4, 16, 64)


def scene_properties(scenes: Any) -> dict[str, torch.Tensor]:
    """``{property: long [n]}`` for a ``DigitScenes`` batch: ``digit``, every attribute, and
    ``texture`` (an alias of ``background``)."""
    props = {"digit": scenes.labels}
    props.update(scenes.attributes)
    props["texture"] = scenes.attributes["background"]
    return props


def check_properties(properties: list[str] | tuple[str, ...], valid: list[str]) -> list[str]:
    """The requested properties, each checked to exist (with a did-you-mean)."""
    if not properties:
        raise ProbeInputError(f"no properties to probe; name at least one of {', '.join(valid)}")
    for p in properties:
        if p not in valid:
            raise ProbeInputError(f"unknown property {p!r}.{suggest(p, valid)} Properties of the "
                                  f"digit scenes: {', '.join(valid)}")
    return list(properties)


@dataclass
class ProbeGrid:
    """Results by ``(site, property)``; ``sites`` and ``properties`` keep the row/column order."""

    sites: list[str]
    properties: list[str]
    cells: dict[tuple[str, str], ProbeResult] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def matrix(self, what: str = "selectivity") -> np.ndarray:
        """[sites, properties] array of ``accuracy``, ``control_accuracy`` or ``selectivity``."""
        return np.array([[getattr(self.cells[(s, p)], what) for p in self.properties]
                         for s in self.sites], dtype=float)

    def to_dict(self) -> dict[str, Any]:
        return {"sites": self.sites, "properties": self.properties, "info": self.info,
                "cells": [{"site": s, "property": p, **self.cells[(s, p)].to_dict()}
                          for s in self.sites for p in self.properties]}

    def to_markdown(self) -> str:
        """One row per site; each cell ``accuracy / control (selectivity)``."""
        head = "| site | " + " | ".join(self.properties) + " |"
        lines = [head, "|---|" + "---:|" * len(self.properties)]
        for s in self.sites:
            cells = []
            for p in self.properties:
                r = self.cells[(s, p)]
                cells.append(f"{r.accuracy:.2f} / {r.control_accuracy:.2f} "
                             f"(**{r.selectivity:+.2f}**)")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def probe_grid(features: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
               types: torch.Tensor | None, *, test_fraction: float = 0.25,
               seed: int = 0) -> ProbeGrid:
    """Probe every feature set for every property (same split and control types in each)."""
    grid = ProbeGrid(sites=list(features), properties=list(labels))
    for s, x in features.items():
        for p, y in labels.items():
            grid.cells[(s, p)] = probe(x, y, types=types, test_fraction=test_fraction, seed=seed)
    return grid


def run_study(model: Any = None, *, layers: list[int] | None = None,
              properties: tuple[str, ...] = DEFAULT_PROPERTIES, n_images: int = 1500,
              ks: tuple[int, ...] = DEFAULT_KS, sae: Any = None, pool: str = "cls",
              test_fraction: float = 0.25, seed: int = 0) -> ProbeGrid:
    """The layer × property grid on held-out digit scenes (``test`` split), plus MSAE latents
    at each k in ``ks`` (``ks=()`` skips them; ``sae=None`` loads the shipped embed MSAE)."""
    from msae_plugin.embedded.dataset import ATTRIBUTE_NAMES, make_digit_scenes
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP

    props = check_properties(properties, ["digit", *ATTRIBUTE_NAMES, "texture"])  # before loads
    if model is None:
        model = HookedOpenCLIP.from_pretrained("msae-tiny-clip").eval()
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else list(layers)
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise ProbeInputError(f"layers {bad} do not exist: the model has blocks 0..{n_layers - 1}"
                              "; pass block indices in that range")
    scenes = make_digit_scenes(n_images, "test", seed=seed)
    all_props = scene_properties(scenes)
    if ks and sae is None:
        from sae_lens import SAE

        sae = SAE.from_pretrained(MSAE_RELEASE, "hook_image_embed")
        sae = (sae[0] if isinstance(sae, tuple) else sae).eval()
    sae_hook = sae.cfg.metadata.hook_name if ks else None
    hooks = [f"blocks.{i}.hook_resid_post" for i in layers] + ["hook_image_embed"]
    acts = hook_activations(model, model.preprocess(scenes.images),
                            sorted(set(hooks + ([sae_hook] if sae_hook else []))))
    features = {h: pooled_features(acts[h], pool) for h in hooks}
    for k in ks:
        features[f"msae@{k}"] = sae_features(sae, acts[sae_hook], k=k)
    grid = probe_grid(features, {p: all_props[p] for p in props}, scenes.source_index,
                      test_fraction=test_fraction, seed=seed)
    grid.info = {"n_images": n_images, "split": "test", "seed": seed, "pool": pool,
                 "test_fraction": test_fraction, "control_types": "source digit",
                 "sae_hook": sae_hook, "ks": list(ks),
                 "n_source_digits": int(scenes.source_index.unique().numel())}
    return grid


def plot_grid(grid: ProbeGrid, path: Any) -> None:
    """Heat maps (site × property) of accuracy, control accuracy and selectivity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("accuracy", "accuracy", "viridis", 0.0), ("control_accuracy", "control",
              "viridis", 0.0), ("selectivity", "selectivity", "RdBu", -1.0)]
    h = 0.45 * len(grid.sites) + 1.6
    fig, axes = plt.subplots(1, 3, figsize=(4 + 1.4 * len(grid.properties) * 3 / 2, h))
    for ax, (what, title, cmap, vmin) in zip(axes, panels, strict=True):
        m = grid.matrix(what)
        ax.imshow(m, cmap=cmap, vmin=vmin, vmax=1.0, aspect="auto")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="w" if what != "selectivity" and m[i, j] < 0.6 else "k")
        ax.set_xticks(range(len(grid.properties)), grid.properties, rotation=30, fontsize=8)
        ax.set_yticks(range(len(grid.sites)), grid.sites if ax is axes[0] else [], fontsize=8)
        ax.set_title(title)
    fig.suptitle(f"linear probes on {grid.info.get('n_images', '?')} held-out scenes "
                 "(control: random label per source digit)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
