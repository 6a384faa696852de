"""Zero-shot classification with a CLIP model (standard recipe), on precomputed image features.

The functions take image features as tensors, so callers can pass features computed by a hooked
model (for instance with an SAE spliced into the residual stream).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from msae_plugin.embedded.dataset import CLASS_NAMES, ZERO_SHOT_TEMPLATES, normalize


def _device_of(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@torch.no_grad()
def build_zero_shot_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str] = CLASS_NAMES,
    templates: Sequence[str] = ZERO_SHOT_TEMPLATES,
) -> torch.Tensor:
    """``[C, D]`` class embeddings: per class, the mean of the L2-normalised text embeddings of
    every template filled with the class name, L2-normalised again."""
    if not class_names or not templates:
        raise ValueError("class_names and templates must be non-empty")
    device = _device_of(model)
    texts = [t.format(c) for c in class_names for t in templates]
    emb = model.encode_text(tokenizer(texts).to(device))
    emb = F.normalize(emb.float(), dim=-1).view(len(class_names), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def zero_shot_logits(
    image_features: torch.Tensor, classifier: torch.Tensor, logit_scale: float = 100.0
) -> torch.Tensor:
    """``logit_scale * normalise(image_features) @ classifier.T`` -> ``[N, C]``."""
    feats = F.normalize(image_features.float(), dim=-1)
    return logit_scale * feats @ classifier.to(feats.device, feats.dtype).T


def zero_shot_accuracy(
    image_features: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor
) -> float:
    """Top-1 accuracy of the zero-shot classifier."""
    pred = zero_shot_logits(image_features, classifier).argmax(dim=-1)
    return (pred.cpu() == labels.cpu()).float().mean().item()


@torch.no_grad()
def encode_scene_images(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """Image features of un-normalised [0, 1] scenes (normalises, batches, returns on CPU)."""
    device = _device_of(model)
    dtype = next(model.parameters()).dtype
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = normalize(images[i : i + batch_size]).to(device=device, dtype=dtype)
        out.append(model.encode_image(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0)
