"""Attention-head ablation scan for the hooked CLIP image tower.

For every attention head ``(layer, head)`` of :class:`~msae_plugin.vision.hooked_clip.HookedOpenCLIP`
the head's output ``blocks.{layer}.attn.hook_z[:, :, head]`` is replaced by zero (``mode="zero"``)
or by its mean over the given images at each token position (``mode="mean"``), and the change of
the zero-shot cross-entropy loss and accuracy against the unablated baseline is recorded.

Cost: the baseline runs once. Blocks before the ablated layer do not depend on the ablation, so
each batch's residual stream entering every scanned layer is cached once (``run_with_cache`` on
``blocks.{L}.hook_resid_pre``) and each ablated run resumes from there: a head in layer ``L``
costs ``(n_layers - L) / n_layers`` of a forward pass, about half on average. The resumed path
is checked against the full forward on the first batch and the scan falls back to full forwards
(``run_with_hooks``) if they ever disagree, or when SAEs are spliced into the model.

    from msae_plugin.vision.head_ablation import head_ablation_scan
    res = head_ablation_scan(model, images, labels, classifier, mode="mean")
    print(res.to_markdown()); res.plot_heatmap("heads.png"); res.top(5)
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from msae_plugin.errors import ModelInputError
from msae_plugin.vision.head_ablation_result import HeadAblationResult, HeadScore
from msae_plugin.vision.images import check_images

MODES = ("zero", "mean")
_RESUME_TOL = 1e-4  # max |embedding difference| tolerated between resumed and full forward

__all__ = ["MODES", "HeadAblationResult", "HeadScore", "head_ablation_scan"]


# ---------------------------------------------------------------------- input checks
def _check_inputs(
    model: Any,
    images: torch.Tensor,
    labels: Any,
    classifier: torch.Tensor,
    mode: str,
    layers: Sequence[int] | None,
    batch_size: int,
) -> tuple[torch.Tensor, list[int]]:
    if mode not in MODES:
        raise ModelInputError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ModelInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_images(images, model.cfg.image_size)  # empty batch, dtype, channels, size, NaN
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.is_floating_point():
        raise ModelInputError(
            f"labels must be a 1-D integer tensor of class indices, got dtype {labels.dtype} and "
            f"shape {tuple(labels.shape)}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ModelInputError(
            f"labels has {labels.shape[0]} entries but there are {images.shape[0]} images; pass "
            "one label per image"
        )
    if not isinstance(classifier, torch.Tensor) or classifier.dim() != 2:
        raise ModelInputError(
            "classifier must be a [n_classes, embed_dim] tensor of L2-normalised class text "
            "embeddings (msae_plugin.embedded.zero_shot.build_zero_shot_classifier makes one)"
        )
    n_classes, dim = classifier.shape
    if dim != model.cfg.output_dim:
        raise ModelInputError(
            f"classifier rows have width {dim} but the image embedding has "
            f"{model.cfg.output_dim}; build the classifier with the same CLIP model"
        )
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ModelInputError(
            f"labels must lie in [0, {n_classes - 1}] (the classifier has {n_classes} classes), "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    n_layers = model.cfg.n_layers
    if layers is None:
        chosen = list(range(n_layers))
    else:
        chosen = []
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise ModelInputError(f"layers must be integers, got {layer!r}")
            if not 0 <= layer < n_layers:
                raise ModelInputError(
                    f"layer {layer} is out of range: the image tower has {n_layers} blocks "
                    f"(layers 0..{n_layers - 1})"
                )
            chosen.append(layer)
        chosen = sorted(set(chosen))
        if not chosen:
            raise ModelInputError("layers is empty: pass None to scan every layer")
    return labels.long(), chosen


# ---------------------------------------------------------------------- forward pieces
def _image_tail(model: Any, x: torch.Tensor) -> torch.Tensor:
    """What ``HookedOpenCLIP._forward_image`` does after the last block (ln_post, pool, proj).
    Verified against the full forward on the first batch of every scan."""
    v = model.clip.visual
    if v.final_ln_after_pool:
        pooled, _ = v._global_pool(x)
        pooled = model.hook_ln_post(v.ln_post(pooled))
    else:
        x = model.hook_ln_post(v.ln_post(x))
        pooled, _ = v._global_pool(x)
    if v.proj is not None:
        pooled = pooled @ v.proj
    return model.hook_image_embed(pooled)


def _resume(model: Any, resid_pre: torch.Tensor, layer: int) -> torch.Tensor:
    """Image embedding from the residual stream entering block ``layer``."""
    x = resid_pre
    for block in model.blocks[layer:]:
        x = block(x)
    return _image_tail(model, x)


def _ablation_hook(head: int, value: torch.Tensor | None) -> Callable[..., torch.Tensor]:
    """Hook on ``hook_z`` ``[batch, pos, head, d_head]`` setting one head to 0 or to ``value``
    (``[pos, d_head]``, broadcast over the batch)."""

    def hook(z: torch.Tensor, hook: Any = None) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = 0.0 if value is None else value
        return z

    return hook


def _z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


@torch.no_grad()
def _mean_z(
    model: Any, images: torch.Tensor, layers: list[int], batch_size: int, progress: bool
) -> dict[int, torch.Tensor]:
    """``layer -> [pos, head, d_head]``: mean of ``hook_z`` over all images (one cached pass)."""
    from tqdm.auto import tqdm

    names = [_z_name(layer) for layer in layers]
    sums: dict[int, torch.Tensor] = {}
    for i in tqdm(range(0, images.shape[0], batch_size), desc="mean hook_z", leave=False,
                  disable=not progress):
        x = images[i : i + batch_size].to(device=model.device, dtype=model.dtype)
        _, cache = model.run_with_cache(x, names_filter=names, stop_at_layer=max(layers) + 1)
        for layer in layers:
            s = cache[_z_name(layer)].float().sum(dim=0)
            sums[layer] = s if layer not in sums else sums[layer] + s
        del cache
    return {layer: (s / images.shape[0]).to(model.dtype) for layer, s in sums.items()}


# ---------------------------------------------------------------------- the scan
@torch.no_grad()
def head_ablation_scan(
    model: Any,
    images: torch.Tensor,
    labels: Any,
    classifier: torch.Tensor,
    mode: str = "zero",
    layers: Sequence[int] | None = None,
    batch_size: int = 128,
    progress: bool = True,
    logit_scale: float | None = None,
    resume: bool = True,
) -> HeadAblationResult:
    """Ablate each attention head of the image tower in turn; measure zero-shot loss/accuracy.

    Args:
        model: a :class:`~msae_plugin.vision.hooked_clip.HookedOpenCLIP` (eval mode).
        images: float ``[N, 3, H, W]``, normalised for the model (``model.preprocess``).
        labels: ``[N]`` class indices into ``classifier``.
        classifier: ``[C, embed_dim]`` L2-normalised class text embeddings.
        mode: ``"zero"`` (head output set to 0) or ``"mean"`` (set to its mean over ``images``
            at each position, computed once before the scan).
        layers: blocks to scan (default: all). Other rows of the result are NaN.
        batch_size: images per forward pass.
        progress: show tqdm progress bars.
        logit_scale: temperature of the zero-shot logits; default the model's own
            ``exp(clip.logit_scale)`` (100 if it has none). Accuracy does not depend on it.
        resume: reuse the unablated activations before the ablated layer (exact; about twice as
            fast). ``False`` runs every ablation as a full ``run_with_hooks`` forward.
    """
    from tqdm.auto import tqdm

    labels, layers = _check_inputs(model, images, labels, classifier, mode, layers, batch_size)
    t0 = time.perf_counter()
    if logit_scale is None:
        logit_scale = model.logit_scale()  # exp(clip.logit_scale), 100 if the model has none
    cls_w = classifier.to(device=model.device, dtype=torch.float32)
    n_images, n_layers, n_heads = images.shape[0], model.cfg.n_layers, model.cfg.n_heads
    if resume and getattr(model, "acts_to_saes", None):
        resume = False  # spliced SAEs need the full forward (their token masks are set there)

    def stats(embed: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        logits = logit_scale * F.normalize(embed.float(), dim=-1) @ cls_w.T
        loss = F.cross_entropy(logits, y, reduction="sum")
        return float(loss), int((logits.argmax(dim=-1) == y).sum())

    means = _mean_z(model, images, layers, batch_size, progress) if mode == "mean" else {}
    pairs = [(layer, h) for layer in layers for h in range(n_heads)]
    hooks = {
        (layer, h): _ablation_hook(h, means[layer][:, h] if mode == "mean" else None)
        for layer, h in pairs
    }
    loss_sum = torch.zeros(len(pairs), dtype=torch.float64)
    correct = torch.zeros(len(pairs), dtype=torch.long)
    base_loss, base_correct = 0.0, 0
    resume_checked = False
    max_resume_err = None
    resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in layers]

    n_batches = math.ceil(n_images / batch_size)
    with tqdm(total=n_batches * len(pairs), desc=f"{mode}-ablating heads", unit="head",
              disable=not progress) as pbar:
        for i in range(0, n_images, batch_size):
            x = images[i : i + batch_size].to(device=model.device, dtype=model.dtype)
            y = labels[i : i + batch_size].to(model.device)
            if resume:
                embed, cache = model.run_with_cache(x, names_filter=resid_names)
                resid = {layer: cache[f"blocks.{layer}.hook_resid_pre"] for layer in layers}
                del cache
                if not resume_checked:
                    err = float((_resume(model, resid[layers[0]], layers[0]) - embed).abs().max())
                    max_resume_err, resume_checked = err, True
                    if not err <= _RESUME_TOL * max(1.0, float(embed.abs().max())):
                        warnings.warn(
                            f"resumed forward differs from the full forward by {err:.3g}; "
                            "falling back to full forwards (resume=False)",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                        resume = False
            else:
                embed = model(x)
            b_loss, b_correct = stats(embed, y)
            base_loss += b_loss
            base_correct += b_correct
            for j, (layer, h) in enumerate(pairs):
                name = _z_name(layer)
                if resume:
                    with model.hooks(fwd_hooks=[(name, hooks[layer, h])]):
                        out = _resume(model, resid[layer], layer)
                else:
                    out = model.run_with_hooks(x, fwd_hooks=[(name, hooks[layer, h])])
                j_loss, j_correct = stats(out, y)
                loss_sum[j] += j_loss
                correct[j] += j_correct
                pbar.update(1)
            if resume:
                del resid

    baseline_loss = base_loss / n_images
    baseline_acc = base_correct / n_images
    delta_loss = torch.full((n_layers, n_heads), math.nan, dtype=torch.float64)
    delta_acc = torch.full((n_layers, n_heads), math.nan, dtype=torch.float64)
    for j, (layer, h) in enumerate(pairs):
        delta_loss[layer, h] = float(loss_sum[j]) / n_images - baseline_loss
        delta_acc[layer, h] = int(correct[j]) / n_images - baseline_acc
    return HeadAblationResult(
        mode=mode,
        model_name=getattr(model, "model_name", type(model).__name__),
        n_images=n_images,
        n_layers=n_layers,
        n_heads=n_heads,
        layers=layers,
        logit_scale=logit_scale,
        baseline_loss=baseline_loss,
        baseline_acc=baseline_acc,
        delta_loss=delta_loss,
        delta_acc=delta_acc,
        seconds=round(time.perf_counter() - t0, 3),
        extra={"batch_size": batch_size, "resumed": resume, "resume_check_max_abs_err":
               max_resume_err},
    )
