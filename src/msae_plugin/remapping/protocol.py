"""The base-to-novel protocol (CoOp; PatchSAE §4.2.1) around :func:`compare_models`.

The adaptation sees only the *base* classes. Each half of the classes is then analysed on its own:
the images of that half, classified among that half's classes only (as the protocol's accuracy
numbers are), with the class-level counts, groups and masking curves computed per half. The
headline number comes from the base half, the classes the adaptation was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from msae_plugin.errors import RemappingError
from msae_plugin.remapping.comparison import RemappingResult, compare_models


def _half(images: torch.Tensor, labels: Any, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.as_tensor(labels).long()
    keep = torch.isin(labels, torch.tensor(classes))
    remap = torch.full((int(labels.max()) + 1 if len(labels) else 1,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    return images[keep], remap[labels[keep]]


def base_to_novel(
    base: Any,
    adapted: Any,
    sae: Any,
    train: tuple[torch.Tensor, Any],
    test: tuple[torch.Tensor, Any],
    base_classes: Sequence[int],
    novel_classes: Sequence[int] | None = None,
    **kwargs: Any,
) -> dict[str, RemappingResult]:
    """``{"base": result, "novel": result}``: :func:`compare_models` on each half of the
    classes (images of that half, classified among its classes). ``kwargs`` go to
    ``compare_models`` (tau, k, ks, bounds, selections, seed, progress)."""
    n = len(base.class_names)
    base_cls = sorted(set(base_classes))
    novel_cls = sorted(set(range(n)) - set(base_cls) if novel_classes is None
                       else set(novel_classes))
    if not base_cls or set(base_cls) & set(novel_cls) or any(
            not 0 <= c < n for c in [*base_cls, *novel_cls]):
        raise RemappingError(f"base and novel classes must be disjoint, non-empty ids in "
                             f"[0, {n}); got {base_classes!r} and {novel_classes!r}")
    out = {}
    for split, cls in (("base", base_cls), ("novel", novel_cls)):
        if not cls:
            continue
        tr, te = _half(*train, cls), _half(*test, cls)
        out[split] = compare_models(base.subset(cls), adapted.subset(cls), sae, tr, te,
                                    **kwargs)
    return out


def protocol_rows(results: dict[str, RemappingResult]) -> list[dict[str, Any]]:
    """One row per half (the paper's Table 1 columns): mean latents per class in each group,
    accuracies (%) of both models and Δ (%)."""
    rows = []
    for split, r in results.items():
        row = r.summary_rows()[0]
        row["split"] = split
        rows.append(row)
    return rows
