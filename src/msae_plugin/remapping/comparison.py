"""One SAE, a base and an adapted model: the whole PatchSAE comparison in one call.

:func:`compare_models` runs the SAE (trained on the base model) on both models at its hook and
returns a :class:`RemappingResult`: per-latent firing statistics on each model, the latents that
appear, vanish or change most, class-level counts and the three latent groups per class, the
on/off masking curves of both models with their baselines, the accuracies and improvement rate
Δ per split (base / novel classes), and the headline number (ours, not the paper's; the paper
reports none): the share of the adaptation gain that remains when the adapted model may use only
latents already active in the base model.

Headline definition: with the SAE spliced in on both models, ``recovered = (acc(adapted, keep
only base-active latents) − acc(base, SAE)) / (acc(adapted, SAE) − acc(base, SAE))`` on the
classes the adaptation trained on, where "base-active" = dataset-level count > 0 at τ on the base
model's training images. 1 means the gain needs no latent the base model did not already use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from msae_plugin.errors import RemappingError
from msae_plugin.remapping.counts import ActivationSummary, n_base_tokens, summarize
from msae_plugin.remapping.groups import (
    ClassGroups,
    improvement_rate,
    latent_groups,
    mean_over,
    pearson,
)
from msae_plugin.remapping.masking import MaskingCurve, masking_curve, per_class_accuracy


@dataclass
class RemappingResult:
    class_names: list[str]
    base_classes: list[int]
    novel_classes: list[int]
    tau: float
    k: int | None
    hook: str
    train: dict[str, ActivationSummary]  # model name -> counts on the training split
    test: dict[str, ActivationSummary]  # model name -> counts on the held-out split
    curves: dict[str, MaskingCurve]
    groups: ClassGroups
    headline: dict[str, float]
    shifts: dict[str, list[int]]
    bounds: dict[str, Any] = field(default_factory=dict)
    names: tuple[str, str] = ("base", "adapted")

    # ---- tables -----------------------------------------------------------------------
    def accuracy(self, model: str, classes: Sequence[int]) -> float:
        return 100 * mean_over(self.curves[model].original, classes)

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per split: group counts (mean per class), accuracies (%), Δ (%)."""
        rows = []
        b, a = self.names
        for split, cls in (("base", self.base_classes), ("novel", self.novel_classes)):
            if not cls:
                continue
            acc_b, acc_a = self.accuracy(b, cls), self.accuracy(a, cls)
            rows.append({
                "split": split, "classes": len(cls),
                "high": mean_over(self.groups.high, cls),
                "high_to_low": mean_over(self.groups.high_to_low, cls),
                "low_to_high": mean_over(self.groups.low_to_high, cls),
                f"{b}_acc": acc_b, f"{a}_acc": acc_a,
                "delta": 100 * improvement_rate(acc_b, acc_a),
            })
        return rows

    def class_rows(self) -> list[dict[str, Any]]:
        b, a = self.names
        return [{"class": self.class_names[c],
                 "split": "base" if c in self.base_classes else "novel",
                 "high": int(self.groups.high[c]), "high_to_low": int(self.groups.high_to_low[c]),
                 "low_to_high": int(self.groups.low_to_high[c]),
                 f"{b}_acc": 100 * float(self.curves[b].original[c]),
                 f"{a}_acc": 100 * float(self.curves[a].original[c])}
                for c in range(len(self.class_names))]

    def class_top_latents(self, n: int = 5) -> list[dict[str, Any]]:
        """Per class, each model's ``n`` latents with the largest class-level counts (the
        paper's class-wise latents), as ``[latent, count]`` pairs."""
        rows = []
        for c, name in enumerate(self.class_names):
            row: dict[str, Any] = {"class": name}
            for m in self.names:
                counts = self.train[m].counts[c]
                top = torch.argsort(-counts, stable=True)[:n]
                row[m] = [[int(j), int(counts[j])] for j in top]
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        def split_means(curve: MaskingCurve) -> dict[str, Any]:
            return {"all": curve.mean(), "base": curve.mean(self.base_classes),
                    "novel": curve.mean(self.novel_classes) if self.novel_classes else None}

        b, a = self.names
        return {
            "hook": self.hook, "tau": self.tau, "k": self.k, "bounds": self.bounds,
            "class_names": self.class_names, "base_classes": self.base_classes,
            "novel_classes": self.novel_classes,
            "summary": self.summary_rows(), "per_class": self.class_rows(),
            "class_top_latents": self.class_top_latents(),
            "headline": self.headline, "shifts": self.shifts,
            "freq": {m: s.freq.tolist() for m, s in self.test.items()},
            "mean_active": {m: s.mean_active.tolist() for m, s in self.test.items()},
            "dataset_count_pearson": pearson(self.train[b].dataset_counts,
                                             self.train[a].dataset_counts),
            "masking": {m: {"ks": c.ks, **split_means(c)} for m, c in self.curves.items()},
        }


def check_alignment(base: Any, adapted: Any, sae: Any) -> str:
    """The SAE's hook, checked to exist on both models with the SAE's width and the same
    CLS + patch positions (prompt tokens may come on top)."""
    hook = str(getattr(sae.cfg.metadata, "hook_name", "") or "")
    if base.name == adapted.name:
        raise RemappingError(f"both models are named {base.name!r}; give them different names "
                             "(ZeroShotModel(..., name=...)), the results are keyed by name.")
    for zsm in (base, adapted):
        if hook not in zsm.model.hook_dict:
            from msae_plugin.names import suggest

            raise RemappingError(
                f"{zsm.name} has no hook {hook!r} (the SAE's hook).{suggest(hook, zsm.model.hook_dict)} "
                "The SAE must be trained on a hook both models have."
            )
    nb, na = n_base_tokens(base.model), n_base_tokens(adapted.model)
    if nb != na or tuple(base.model.cfg.grid_size) != tuple(adapted.model.cfg.grid_size):
        raise RemappingError(
            f"the models' token layouts differ ({base.name}: {nb} tokens, grid "
            f"{tuple(base.model.cfg.grid_size)}; {adapted.name}: {na}, "
            f"{tuple(adapted.model.cfg.grid_size)}); latents can only be compared position by "
            "position on models with the same image size and patch grid."
        )
    widths = {z.name: int(getattr(z.model.cfg, "d_model", 0)) for z in (base, adapted)}
    if len(set(widths.values())) > 1:
        raise RemappingError(f"the models' widths differ {widths}; one SAE cannot read both.")
    if base.class_names != adapted.class_names:
        raise RemappingError("base and adapted models score different class lists; pass the "
                             "same classes (in the same order) to both.")
    return hook


def _check_split(images: torch.Tensor, labels: Any, n_classes: int, what: str) -> torch.Tensor:
    labels = torch.as_tensor(labels).long()
    if len(labels) != len(images) or len(images) == 0:
        raise RemappingError(f"the {what} split has {len(images)} images and {len(labels)} "
                             "labels; pass one label per image, at least one image.")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise RemappingError(f"{what} labels must lie in [0, {n_classes})")
    empty = (torch.bincount(labels, minlength=n_classes) == 0).nonzero().flatten().tolist()
    if empty:
        raise RemappingError(f"classes {empty} have no {what} images; every class needs "
                             "examples (more images, or fewer classes).")
    return labels


@torch.no_grad()
def compare_models(
    base: Any,
    adapted: Any,
    sae: Any,
    train: tuple[torch.Tensor, Any],
    test: tuple[torch.Tensor, Any],
    base_classes: Sequence[int] | None = None,
    tau: float = 0.2,
    k: int | None = None,
    ks: Sequence[int] | None = None,
    upper_rank: int = 50,
    lower_rank: int = 100,
    reading: str = "pooled",
    selections: Sequence[str] = ("class", "random", "dataset"),
    seed: int = 0,
    progress: bool = True,
) -> RemappingResult:
    """Compare ``base`` and ``adapted`` (``ZeroShotModel``s) through ``sae`` (see module).
    ``train`` / ``test``: (preprocessed images, labels); ``base_classes``: the classes the
    adaptation trained on (the rest are "novel"; default all)."""
    from tqdm.auto import tqdm

    hook = check_alignment(base, adapted, sae)
    n_classes = len(base.class_names)
    train_y = _check_split(train[0], train[1], n_classes, "training")
    test_y = _check_split(test[0], test[1], n_classes, "held-out")
    base_cls = sorted(range(n_classes) if base_classes is None else set(base_classes))
    novel_cls = [c for c in range(n_classes) if c not in base_cls]
    if not base_cls or any(not 0 <= c < n_classes for c in base_cls):
        raise RemappingError(f"base_classes must be class ids in [0, {n_classes}), got "
                             f"{base_classes!r}")
    tr = {z.name: summarize(z, sae, train[0], train_y, n_classes, tau, k) for z in (base, adapted)}
    te = {z.name: summarize(z, sae, test[0], test_y, n_classes, tau, k) for z in (base, adapted)}
    from msae_plugin.remapping.masking import ks_for

    n_evals = 2 * len(selections) * 2 * len(ks_for(sae.cfg.d_sae, ks))
    bar = tqdm(total=n_evals, desc="remapping: masking", disable=not progress)
    curves = {}
    for z in (base, adapted):
        counts = tr[z.name].counts
        alive = tr[z.name].fires_token > 0
        curves[z.name] = masking_curve(z, sae, counts, alive, test[0], test_y, ks, selections,
                                       ("on", "off"), k, seed, bar)
    bar.close()
    groups = latent_groups(tr[base.name].counts, tr[adapted.name].counts, upper_rank,
                           lower_rank, reading)

    # headline: the adapted model restricted to latents the base model already uses
    base_active = tr[base.name].dataset_counts > 0
    keep = base_active[None].expand(n_classes, -1)
    restricted = per_class_accuracy(adapted, test[0], test_y, n_classes, sae, keep, k)
    acc = {
        "base_sae": mean_over(curves[base.name].on_all, base_cls),
        "adapted_sae": mean_over(curves[adapted.name].on_all, base_cls),
        "adapted_base_latents_only": mean_over(restricted, base_cls),
        "base_original": mean_over(curves[base.name].original, base_cls),
        "adapted_original": mean_over(curves[adapted.name].original, base_cls),
    }
    gain = acc["adapted_sae"] - acc["base_sae"]
    adapted_active = tr[adapted.name].dataset_counts > 0
    headline = {**acc, "base_active_latents": int(base_active.sum()),
                "adapted_only_latents": int((adapted_active & ~base_active).sum()),
                "recovered": (acc["adapted_base_latents_only"] - acc["base_sae"]) / gain
                if abs(gain) > 1e-9 else float("nan")}

    fb, fa = te[base.name].freq, te[adapted.name].freq
    eps = 1.0 / max(1, te[base.name].n_tokens)
    change = ((fa + eps) / (fb + eps)).log().abs()
    shifts = {
        "appear": ((fb == 0) & (fa > 0)).nonzero().flatten().tolist(),
        "vanish": ((fb > 0) & (fa == 0)).nonzero().flatten().tolist(),
        "change_most": change.topk(min(10, len(change))).indices.tolist(),
    }
    return RemappingResult(
        list(base.class_names), base_cls, novel_cls, float(tau), k, hook, tr, te, curves, groups,
        headline, shifts,
        {"upper_rank": upper_rank, "lower_rank": lower_rank, "reading": reading},
        (base.name, adapted.name),
    )
