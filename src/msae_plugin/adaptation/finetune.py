"""Fine-tuning the image tower (its last ``n_blocks`` blocks, or all) against frozen zero-shot
class embeddings: the classic "fine-tune the encoder, keep the text head" adaptation.

Trained with cross-entropy over the base classes; the text side is the base model's
template-averaged zero-shot head, unchanged, so novel classes keep their zero-shot embeddings.
Besides the chosen blocks, ``ln_post`` and the projection are trained when ``head`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from msae_plugin.adaptation._train import check_train_args, train_loop
from msae_plugin.adaptation.task import BASE_CLASSES, TaskData, check_classes
from msae_plugin.embedded.dataset import CLASS_NAMES
from msae_plugin.vision import HookedOpenCLIP
from msae_plugin.zero_shot_model import ZeroShotModel


def tuned_parameter_names(model: HookedOpenCLIP, n_blocks: int | None, head: bool) -> list[str]:
    """Names (in ``model.clip.state_dict()``) of the parameters fine-tuning changes."""
    n_layers = model.cfg.n_layers
    if n_blocks is None:
        n_blocks = n_layers
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or not 1 <= n_blocks <= n_layers:
        raise ValueError(
            f"n_blocks must be an int in 1..{n_layers} (the image tower's blocks) or None for "
            f"all, got {n_blocks!r}"
        )
    prefixes = [f"visual.transformer.resblocks.{i}." for i in range(n_layers - n_blocks, n_layers)]
    if head:
        prefixes += ["visual.ln_post.", "visual.proj"]
    return [n for n, _ in model.clip.named_parameters() if n.startswith(tuple(prefixes))]


def finetune_image_tower(
    data: TaskData,
    model: HookedOpenCLIP | None = None,
    classes: Sequence[int] = BASE_CLASSES,
    n_blocks: int | None = 2,
    head: bool = True,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-4,
    weight_decay: float = 0.01,
    seed: int = 0,
    class_names: Sequence[str] = CLASS_NAMES,
    name: str = "finetune",
) -> ZeroShotModel:
    """Fine-tune the last ``n_blocks`` image blocks (``None``: all) of ``model`` (default: a fresh
    ``msae-tiny-clip``; modified in place) on ``data``'s images of ``classes``; the class
    embeddings are the frozen zero-shot head of the untouched model."""
    from msae_plugin.embedded.zero_shot import build_zero_shot_classifier

    check_train_args(steps, batch_size, lr)
    idx = check_classes(classes)
    if model is None:
        model = HookedOpenCLIP.from_pretrained("msae-tiny-clip")
    names = tuned_parameter_names(model, n_blocks, head)
    emb = build_zero_shot_classifier(model, model.tokenizer, list(class_names)).detach()
    model.requires_grad_(False)
    params = dict(model.clip.named_parameters())
    tuned = [params[n] for n in names]
    for p in tuned:
        p.requires_grad_(True)
    scale = model.logit_scale()
    torch.manual_seed(seed)

    def logits_fn(images: torch.Tensor) -> torch.Tensor:
        return scale * F.normalize(model(images), dim=-1) @ emb[idx].T

    model.train(False)  # no dropout in CLIP towers; eval mode keeps patch dropout off
    log = train_loop(tuned, logits_fn, data, idx, steps, batch_size, lr, seed, weight_decay)
    model.requires_grad_(False)
    info = {
        "method": "finetune",
        "finetune": {"n_blocks": n_blocks if n_blocks is not None else model.cfg.n_layers,
                     "head": head, "parameters": names},
        "train": {"classes": idx, "steps": steps, "batch_size": batch_size, "lr": lr,
                  "weight_decay": weight_decay, "seed": seed,
                  "n_images": len(data.subset(idx)), "shift": data.shift, **log},
    }
    return ZeroShotModel(model, emb, list(class_names), scale, name, info)
