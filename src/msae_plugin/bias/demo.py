"""The embedded demonstration of :func:`concept_bias`: a biased and an unbiased parity probe.

Task: "is the digit even?" on CLIP image embeddings of digit scenes in red or blue. Why parity:
it is a union of five digit shapes, harder for a linear probe than colour, so a probe trained
where colour predicts the label takes the shortcut.

* **biased** training set: every even digit red, every odd digit blue;
* **unbiased** training set: the same size, the four (parity, colour) groups equally common;
* **evaluation**: held-out handwriting (test split), the four groups equally common.

Both are ``LogisticRegression`` probes (``C=1``). The concept is the latents validly named
``"red"`` by :func:`msae_plugin.concepts.name_concepts` (direction-based) on the shipped MSAE
``msae-tiny-clip-msae`` / ``hook_image_embed``; on that SAE they are 119, 246 and 377, which fire
most on red scenes (see docs/bias.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from msae_plugin.bias.analysis import BiasResult, LinearProbe, concept_bias

COLOUR_CODES = {"red": 0, "blue": 2}  # codes into embedded.dataset.COLOURS
PARITY = ("even", "odd")
RELEASE = ("msae-tiny-clip-msae", "hook_image_embed")


@dataclass
class DemoResult:
    """Per probe (``"biased"``, ``"unbiased"``) the :class:`BiasResult` of the concept edit."""

    concept: str
    n_train: int
    n_eval: int
    results: dict[str, BiasResult]

    def to_dict(self) -> dict[str, Any]:
        return {"concept": self.concept, "n_train": self.n_train, "n_eval": self.n_eval,
                "probes": {k: r.to_dict() for k, r in self.results.items()}}


def scene_set(model: Any, n: int, split: str, seed: int, biased: bool) -> tuple[torch.Tensor, ...]:
    """``(embeddings, parity labels, colour names' codes)`` of ``n`` red/blue scenes: the
    biased set pairs even-red and odd-blue only, the balanced set all four groups equally."""
    from msae_plugin.embedded.dataset import make_digit_scenes

    pairs = [("even", "red"), ("odd", "blue")]
    if not biased:
        pairs += [("even", "blue"), ("odd", "red")]
    per = max(1, n // len(pairs))
    # each pair is about 1/12 of the scenes; twice that plus a margin leaves none short in
    # practice (checked below, so a short pair can never silently unbalance the sets)
    scenes = make_digit_scenes(per * 24 + 240, split, seed=seed)
    parity, colour = scenes.attributes["parity"], scenes.attributes["colour"]
    idx = []
    for p, c in pairs:
        hit = torch.nonzero((parity == PARITY.index(p)) & (colour == COLOUR_CODES[c])).flatten()
        if len(hit) < per:  # pragma: no cover - a binomial tail far below 1e-6
            raise RuntimeError(f"only {len(hit)} {p}/{c} scenes of {per} needed")
        idx.append(hit[:per])
    index = torch.cat(idx)
    with torch.no_grad():
        emb = model.encode_image(model.preprocess(scenes.images[index])).float()
    return emb, parity[index], colour[index]


def group_names(parity: torch.Tensor, colour: torch.Tensor) -> list[str]:
    """``"even/red"``-style group labels (parity x colour)."""
    back = {v: k for k, v in COLOUR_CODES.items()}
    return [f"{PARITY[int(p)]}/{back[int(c)]}" for p, c in zip(parity, colour, strict=True)]


def run_demo(n_images: int = 400, seed: int = 0, concept: str = "red", sae: Any = None,
             model: Any = None) -> DemoResult:
    """Train both probes on ``n_images`` scenes each and analyse them on ``n_images`` held-out
    scenes (the shipped model and SAE unless given)."""
    from sae_lens import SAE
    from sklearn.linear_model import LogisticRegression

    from msae_plugin.concepts import load_vocabulary, name_concepts
    from msae_plugin.vision import HookedOpenCLIP

    sae = sae if sae is not None else SAE.from_pretrained(*RELEASE).eval()
    model = model if model is not None else HookedOpenCLIP.from_pretrained("msae-tiny-clip").eval()
    names = name_concepts(sae, model, load_vocabulary())
    latents = names.latents_named(concept)  # an unknown concept raises with nearest names here
    x_eval, y_eval, c_eval = scene_set(model, n_images, "test", seed + 1, biased=False)
    groups = group_names(y_eval, c_eval)
    results = {}
    for kind in ("biased", "unbiased"):
        x, y, _ = scene_set(model, n_images, "train", seed, biased=kind == "biased")
        probe = LinearProbe(LogisticRegression(C=1.0, max_iter=2000).fit(x.numpy(), y.numpy()))
        results[kind] = concept_bias(sae, x_eval, y_eval, probe, latents, groups=groups)
    return DemoResult(concept, n_images, len(x_eval), results)


def format_table(demo: DemoResult) -> str:
    """Markdown: per probe and group, accuracy before and flip rate / accuracy change for the
    clamp-up and clamp-down edits."""
    c = demo.concept
    lines = [f"| probe | group | n | accuracy | flip rate, {c} up | Δ accuracy, {c} up "
             f"| flip rate, {c} down | Δ accuracy, {c} down |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for kind, r in demo.results.items():
        for group, stats in [("all", r.overall), *r.groups.items()]:
            up, down = stats["up"], stats["down"]
            lines.append(f"| {kind} | {group} | {up.n} | {up.accuracy_before:.2f} "
                         f"| {up.flip_rate:.2f} | {up.accuracy_change:+.2f} "
                         f"| {down.flip_rate:.2f} | {down.accuracy_change:+.2f} |")
    return "\n".join(lines)


def plot(demo: DemoResult, path: str | Path) -> None:
    """Grouped bars: flip rate per group (and overall) for each probe and edit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(demo.results.values()))
    keys = ["all", *first.groups]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    width = 0.38
    for ax, edit in zip(axes, ("up", "down"), strict=True):
        for i, (kind, r) in enumerate(demo.results.items()):
            vals = [(r.overall if k == "all" else r.groups[k])[edit].flip_rate for k in keys]
            ax.bar([j + (i - 0.5) * width for j in range(len(keys))], vals, width, label=kind)
        ax.set_xticks(range(len(keys)), keys, fontsize=8)
        ax.set_title(f"'{demo.concept}' clamped {edit}")
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("decision flip rate")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
