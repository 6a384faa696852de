"""A CLIP image tower together with the class text embeddings it is scored against: the unit
the adaptation methods produce and the remapping analyses compare.

Why one object: an adapted model is not only new image weights. Prompt learning changes the
class embeddings (CoOp's learned text context) and the image forward (visual prompt tokens);
fine-tuning changes the image tower only. The analyses need exactly "run the image tower,
possibly with hooks, and score the embedding against the classes", for base and adapted alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class ZeroShotModel:
    """``model``: a ``HookedOpenCLIP`` (visual prompts, if any, live inside it);
    ``class_embeddings``: ``[C, D]`` unit text embeddings, one per class; ``logit_scale``: the
    temperature (CLIP's learned one by default)."""

    model: Any
    class_embeddings: torch.Tensor
    class_names: list[str]
    logit_scale: float = 100.0
    name: str = "model"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.class_embeddings.dim() != 2 or len(self.class_embeddings) != len(self.class_names):
            raise ValueError(
                f"class_embeddings must be [C, D] with one row per class name ({len(self.class_names)}), "
                f"got {tuple(self.class_embeddings.shape)}"
            )

    @classmethod
    def from_templates(cls, model: Any, class_names: Sequence[str],
                       templates: Sequence[str] | None = None, name: str = "model") -> ZeroShotModel:
        """The standard zero-shot head: mean of the template embeddings per class."""
        from msae_plugin.embedded.dataset import ZERO_SHOT_TEMPLATES
        from msae_plugin.embedded.zero_shot import build_zero_shot_classifier

        emb = build_zero_shot_classifier(model, model.tokenizer, list(class_names),
                                         templates or ZERO_SHOT_TEMPLATES)
        return cls(model, emb, list(class_names), model.logit_scale(), name)

    def logits_from_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[n, C]`` scaled cosine logits of image embeddings."""
        feats = F.normalize(embeddings.float(), dim=-1)
        return self.logit_scale * feats @ self.class_embeddings.to(feats.device, feats.dtype).T

    def logits(self, images: torch.Tensor, fwd_hooks: Sequence[tuple[str, Any]] = ()) -> torch.Tensor:
        """``[n, C]`` logits of preprocessed images, with optional TransformerLens forward hooks
        (e.g. an SAE reconstruction spliced in)."""
        if fwd_hooks:
            emb = self.model.run_with_hooks(images, fwd_hooks=list(fwd_hooks))
        else:
            emb = self.model(images)
        return self.logits_from_embeddings(emb)

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256,
                 fwd_hooks: Sequence[tuple[str, Any]] = ()) -> float:
        """Top-1 accuracy over ``images`` (batched)."""
        correct = 0
        for i in range(0, len(images), batch_size):
            pred = self.logits(images[i:i + batch_size], fwd_hooks).argmax(-1).cpu()
            correct += int((pred == labels[i:i + batch_size].cpu()).sum())
        return correct / max(1, len(images))

    def subset(self, classes: Sequence[int], name: str | None = None) -> ZeroShotModel:
        """The same model scored against only ``classes`` (in that order): the base-to-novel
        protocol classifies each half among its own classes."""
        idx = list(classes)
        if not idx or any(not 0 <= c < len(self.class_names) for c in idx):
            raise ValueError(f"classes must be ids in [0, {len(self.class_names)}), got {classes!r}")
        return ZeroShotModel(self.model, self.class_embeddings[idx],
                             [self.class_names[c] for c in idx], self.logit_scale,
                             name or self.name, dict(self.info))
