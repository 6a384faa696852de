"""Prompt learning on a frozen CLIP: CoOp text context + MaPLe-style deep visual prompts.

Only the prompts are trained (the model's weights stay frozen), with cross-entropy over the base
classes of the task. The vision and text prompts are independent parameters trained jointly
(MaPLe's "independent V-L prompting" variant; MaPLe proper derives the visual prompts from the
text ones through a learned coupling layer, which this small library does not reproduce).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from msae_plugin.adaptation._train import check_train_args, train_loop
from msae_plugin.adaptation.task import BASE_CLASSES, TaskData, check_classes
from msae_plugin.adaptation.text_prompts import TextContext
from msae_plugin.adaptation.visual_prompts import VisualPrompts
from msae_plugin.embedded.dataset import CLASS_NAMES
from msae_plugin.vision import HookedOpenCLIP
from msae_plugin.zero_shot_model import ZeroShotModel


def train_prompts(
    data: TaskData,
    model: HookedOpenCLIP | None = None,
    classes: Sequence[int] = BASE_CLASSES,
    depth: int = 3,
    n_ctx: int = 4,
    ctx_init: str | None = "a photo of the digit",
    text: bool = True,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 0.01,
    seed: int = 0,
    class_names: Sequence[str] = CLASS_NAMES,
    name: str = "prompt-learning",
) -> ZeroShotModel:
    """Learn ``depth x n_ctx`` visual prompt tokens (and, with ``text``, the CoOp context
    ``ctx_init``) on ``data``'s images of ``classes``; returns the adapted model scored against
    all ``class_names`` (the learned context is shared, so novel classes get it too).

    ``model``: a ``HookedOpenCLIP`` (default: a fresh ``msae-tiny-clip``); it is frozen and gets
    the prompts attached (pass a copy if you need the plain one)."""
    check_train_args(steps, batch_size, lr)
    idx = check_classes(classes)
    if model is None:
        model = HookedOpenCLIP.from_pretrained("msae-tiny-clip")
    model.requires_grad_(False)
    torch.manual_seed(seed)
    prompts = VisualPrompts(depth, n_ctx, model.cfg.d_model, seed=seed)
    model.set_visual_prompts(prompts)
    ctx = TextContext(model, class_names, ctx_init=ctx_init, seed=seed) if text else None
    fixed = None
    if ctx is None:
        from msae_plugin.embedded.zero_shot import build_zero_shot_classifier

        fixed = build_zero_shot_classifier(model, model.tokenizer, list(class_names))
    scale = model.logit_scale()
    params = list(prompts.parameters()) + (list(ctx.parameters()) if ctx is not None else [])

    def logits_fn(images: torch.Tensor) -> torch.Tensor:
        emb = ctx.class_embeddings(model, idx) if ctx is not None else fixed[idx]
        return scale * F.normalize(model(images), dim=-1) @ emb.T

    model.train(False)
    log = train_loop(params, logits_fn, data, idx, steps, batch_size, lr, seed)
    prompts.requires_grad_(False)
    with torch.no_grad():
        emb = ctx.class_embeddings(model) if ctx is not None else fixed
    info = {
        "method": "prompt_learning",
        "visual_prompts": {"depth": depth, "n_ctx": prompts.n_ctx},
        "text_ctx": None if ctx is None else {"n_ctx": ctx.n_ctx, "ctx_init": ctx_init},
        "train": {"classes": idx, "steps": steps, "batch_size": batch_size, "lr": lr,
                  "seed": seed, "n_images": len(data.subset(idx)), "shift": data.shift, **log},
    }
    if ctx is not None:
        info["_text_ctx"] = ctx.ctx.detach().clone()
    return ZeroShotModel(model, emb.detach(), list(class_names), scale, name, info)
