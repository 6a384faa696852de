"""Concept bias analysis of a downstream classifier (MSAE paper §5, the CelebA gender study).

Why this procedure: a classifier on CLIP embeddings is biased towards a concept when its
decisions change as the concept alone changes. An SAE isolates the concept as a few latents, so
we can clamp them **up** (set their codes to a high value) or **down** (set them to zero) and
re-classify. The edit goes through the SAE error term, ``x' = x + decode(z') - decode(z)``
(:func:`msae_plugin.concepts.edit_embeddings`), so whatever the SAE does not reconstruct is kept
and every change of a prediction is caused by the concept edit, not by reconstruction error.

Measured, overall and per group (e.g. label x colour), for each edit:

* **flip rate**: the fraction of predictions that change (``argmax`` of the logits);
* **accuracy change**: accuracy after the edit minus accuracy before.

A classifier that ignores the concept flips few decisions; one that relies on it flips many, and
its accuracy drops on the groups where the concept contradicts the label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from msae_plugin.concepts.search import _codes, edit_embeddings
from msae_plugin.errors import BiasAnalysisError

#: a classifier: embeddings ``[n, d]`` -> logits ``[n, classes]`` (argmax = predicted label)
Classifier = Callable[[torch.Tensor], Any]
EDITS = ("up", "down")


@dataclass
class EditStats:
    """Effect of one edit on a set of examples (all of them, or one group)."""

    n: int
    accuracy_before: float
    accuracy_after: float
    flip_rate: float

    @property
    def accuracy_change(self) -> float:
        return self.accuracy_after - self.accuracy_before


@dataclass
class BiasResult:
    """The result of :func:`concept_bias`: per edit (``"up"``, ``"down"``) the overall
    :class:`EditStats` and one per group; the predictions are kept for inspection."""

    latents: list[int]
    values: list[float]
    overall: dict[str, EditStats]
    groups: dict[str, dict[str, EditStats]] = field(default_factory=dict)
    predictions: dict[str, torch.Tensor] = field(default_factory=dict)  # before / up / down

    def to_dict(self) -> dict[str, Any]:
        def stats(s: EditStats) -> dict[str, float]:
            return {"n": s.n, "accuracy_before": s.accuracy_before,
                    "accuracy_after": s.accuracy_after, "accuracy_change": s.accuracy_change,
                    "flip_rate": s.flip_rate}

        return {"latents": self.latents, "values": self.values,
                "overall": {e: stats(s) for e, s in self.overall.items()},
                "groups": {g: {e: stats(s) for e, s in d.items()} for g, d in self.groups.items()}}


class LinearProbe:
    """Wraps a fitted scikit-learn linear classifier (``LogisticRegression``...) as a
    :data:`Classifier`: embeddings -> ``[n, classes]`` logits from ``decision_function``.

    Why a wrapper: sklearn gives a single column for binary problems and works on numpy; the
    analysis wants one logit per class, as the zero-shot classifier gives."""

    def __init__(self, estimator: Any) -> None:
        classes = list(getattr(estimator, "classes_", []))
        if classes != list(range(len(classes))) or len(classes) < 2:
            raise BiasAnalysisError(
                f"the estimator's classes_ are {classes!r}; fit it on labels 0..C-1 (C >= 2, "
                "e.g. sklearn.preprocessing.LabelEncoder) so that logit columns are labels."
            )
        self.estimator = estimator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        d = torch.as_tensor(self.estimator.decision_function(x.detach().cpu().float().numpy()))
        return torch.stack([torch.zeros_like(d), d], -1) if d.dim() == 1 else d


def resolve_latents(latents: str | Sequence[int], names: Any = None) -> list[int]:
    """Latent ids of a concept: a list of ids as given, or a word looked up with
    ``names.latents_named`` (a :class:`~msae_plugin.concepts.ConceptNames`), which raises
    ``UnknownConceptError`` with the nearest valid names for an unknown word."""
    if isinstance(latents, str):
        if names is None:
            raise BiasAnalysisError(
                f"concept {latents!r} is a word, but no names were given to look it up; pass "
                "names=name_concepts(sae, model, load_vocabulary()) or latent ids."
            )
        return names.latents_named(latents)
    return [int(j) for j in latents]


def concept_values(sae: Any, embeddings: torch.Tensor, latents: Sequence[int],
                   strength: float = 1.0) -> list[float]:
    """Default clamp-up values: ``strength`` x each latent's largest code on ``embeddings``.

    Why per latent: a concept's latents fire at different scales (on the shipped SAE the three
    "red" latents peak at 0.6, 3.2 and 3.6 on 400 scenes), so one value for all would over-drive the weak
    ones."""
    with torch.no_grad():
        z = _codes(sae, embeddings)[:, list(latents)]
    return [strength * float(v) for v in z.max(0).values]


def clamp_embeddings(sae: Any, embeddings: torch.Tensor, latents: Sequence[int],
                     values: Sequence[float] | None) -> torch.Tensor:
    """Embeddings with the latents' codes set to ``values`` (``None``: set to zero).

    Built from :func:`msae_plugin.concepts.edit_embeddings`: remove the latents, then add each
    value. Adding through the error term moves the embedding by exactly ``v * W_dec[j] / s``
    whatever the code of the intermediate embedding, so the result is the clamp."""
    out = edit_embeddings(sae, embeddings, list(latents), "remove")
    for j, v in zip(latents, values, strict=True) if values is not None else ():
        out = edit_embeddings(sae, out, [j], "add", v)
    return out


def _as_labels(values: Any, n: int, what: str, fix: str) -> torch.Tensor:
    if values is None:
        raise BiasAnalysisError(f"{what} are missing; {fix}")
    t = torch.as_tensor(values)
    if t.dim() != 1 or len(t) != n:
        raise BiasAnalysisError(
            f"{what} have shape {tuple(t.shape)}, but there are {n} embeddings; pass one per "
            f"embedding (a 1-D sequence of length {n}). {fix}"
        )
    return t


def _predict(classifier: Classifier, x: torch.Tensor) -> torch.Tensor:
    logits = torch.as_tensor(classifier(x))
    if logits.dim() != 2 or len(logits) != len(x) or logits.shape[1] < 2:
        raise BiasAnalysisError(
            f"the classifier returned shape {tuple(logits.shape)} for {len(x)} embeddings; it "
            "must return [n, classes] logits (wrap a sklearn estimator in LinearProbe)."
        )
    return logits.argmax(-1).cpu()


def _stats(labels: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> EditStats:
    return EditStats(n=len(labels), accuracy_before=float((before == labels).float().mean()),
                     accuracy_after=float((after == labels).float().mean()),
                     flip_rate=float((before != after).float().mean()))


def concept_bias(
    sae: Any,
    embeddings: torch.Tensor,
    labels: Any,
    classifier: Classifier,
    latents: str | Sequence[int],
    *,
    values: Sequence[float] | float | None = None,
    strength: float | None = None,
    groups: Sequence[Any] | None = None,
    names: Any = None,
) -> BiasResult:
    """Clamp a concept up and down in SAE space and measure the classifier's decision flips.

    ``embeddings`` ``[n, d_in]`` (the SAE's input, e.g. ``hook_image_embed``); ``labels`` ``[n]``
    class indices (columns of the classifier's logits); ``latents`` ids or a word resolved with
    ``names``. Clamp-up sets the latents to ``values`` (one per latent, or one for all) or, by
    default, to ``strength`` (default 1) x each latent's largest code on ``embeddings``;
    clamp-down sets them to zero. ``groups`` (one hashable per embedding, e.g. ``"even/red"``)
    adds per-group statistics."""
    if values is not None and strength is not None:
        raise BiasAnalysisError("pass values or strength, not both; values are the clamp-up "
                                "codes, strength scales each latent's largest code.")
    x = torch.as_tensor(embeddings)
    if x.dim() != 2 or len(x) == 0:
        raise BiasAnalysisError(
            f"embeddings must be a non-empty [n, d_in] tensor, got shape {tuple(x.shape)}; pass "
            "model.encode_image(images) for an SAE on hook_image_embed."
        )
    y = _as_labels(labels, len(x), "labels", "pass the true class index of every embedding.")
    ids = resolve_latents(latents, names)
    down = clamp_embeddings(sae, x, ids, None)  # first: edit_embeddings checks the latent ids
    if values is None:
        ups = concept_values(sae, x, ids, 1.0 if strength is None else strength)
    else:
        ups = [float(values)] * len(ids) if isinstance(values, int | float) else list(values)
        if len(ups) != len(ids):
            raise BiasAnalysisError(f"{len(ups)} clamp values for {len(ids)} latents {ids}; pass "
                                    "one value per latent, a single number, or strength=.")
    preds = {"before": _predict(classifier, x.float()),
             "up": _predict(classifier, clamp_embeddings(sae, x, ids, ups)),
             "down": _predict(classifier, down)}
    y = y.to(preds["before"].dtype)
    overall = {e: _stats(y, preds["before"], preds[e]) for e in EDITS}
    per_group: dict[str, dict[str, EditStats]] = {}
    if groups is not None:
        g = list(groups) if not isinstance(groups, torch.Tensor) else groups.tolist()
        if len(g) != len(x):
            raise BiasAnalysisError(f"groups has {len(g)} entries for {len(x)} embeddings; pass "
                                    "one group label per embedding, or leave groups out.")
        for key in sorted(set(g), key=str):
            m = torch.tensor([gi == key for gi in g])
            per_group[str(key)] = {e: _stats(y[m], preds["before"][m], preds[e][m])
                                   for e in EDITS}
    return BiasResult(ids, ups, overall, per_group, preds)
