"""The MSAE paper's downstream metric: zero-shot accuracy kept when the SAE's reconstruction
replaces the activation at its hook (no error term), at each k of the ladder.

Reconstruction metrics (FVU, cosine) say how close the reconstruction is; this says whether what
is lost matters to the model's task. "Kept" is spliced accuracy / original accuracy.
The same logits give the expected calibration error (ECE, :mod:`msae_plugin.calibration`) of
the original and of every spliced level: a reconstruction can keep the top-1 answer and still
change how far the model's confidence can be trusted.

:class:`VisionSAEEvaluator` is the reconstruction side during training: SAELens's ``SAETrainer``
calls it (when logging to W&B) for FVU / cosine / L0 / dead latents on held-out activations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from msae_plugin.calibration import (
    DEFAULT_N_BINS,
    ReliabilityCurve,
    check_n_bins,
    reliability_curve,
)
from msae_plugin.errors import CalibrationError

if TYPE_CHECKING:
    from sae_lens.training.activation_scaler import ActivationScaler

    from msae_plugin.vision.training import VisionSAETrainingRunner


#: keys of :func:`zero_shot_accuracy_kept`'s result that are not a level of the ladder
SUMMARY_KEYS = ("original", "original_ece", "calibration")
#: temperature when the model has no learned ``logit_scale`` (CLIP's cap, and the default of
#: :func:`msae_plugin.embedded.zero_shot.zero_shot_logits`)
FALLBACK_LOGIT_SCALE = 100.0


def ladder_levels(result: dict[str, Any]) -> list[str]:
    """The level keys (``"k=8"``, ..., ``"relu"`` or ``"sae"``) of a
    :func:`zero_shot_accuracy_kept` result, in evaluation order."""
    return [key for key in result if key not in SUMMARY_KEYS]


def model_logit_scale(model: Any) -> float:
    """The CLIP model's learned temperature ``exp(logit_scale)`` (what its softmax over classes
    uses in training), or :data:`FALLBACK_LOGIT_SCALE` when it has none. Accuracy does not
    depend on it; calibration does, so the one the model was trained with is the honest one."""
    param = getattr(getattr(model, "clip", model), "logit_scale", None)
    if isinstance(param, torch.Tensor) and param.numel() == 1:
        return float(param.detach().float().exp())
    return FALLBACK_LOGIT_SCALE


def zero_shot_accuracy_kept(
    model: Any,
    sae: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    classifier: torch.Tensor,
    ks: Sequence[int | None] | None = None,
    exclude_cls: bool = False,
    batch_size: int = 256,
    n_bins: int = DEFAULT_N_BINS,
    logit_scale: float | None = None,
) -> dict[str, Any]:
    """Zero-shot accuracy and calibration of ``model`` alone and with ``sae``'s reconstruction
    spliced in.

    For an MSAE, ``ks`` defaults to its ladder plus the ReLU path (``None``); other SAEs are
    evaluated once with their own ``encode`` (key ``"sae"``). Returns ::

        {"original": acc, "original_ece": ece,
         "k=64": {"accuracy": ..., "kept": accuracy / original, "ece": ...}, ...,
         "calibration": {"n_bins": 15, "logit_scale": s,
                         "reliability": {"original": curve, "k=64": curve, ...}}}

    The ECE (:mod:`msae_plugin.calibration`, ``n_bins`` equal-width bins) is computed from the
    same logits as the accuracy (no extra forward pass), turned into probabilities by a softmax
    of ``logit_scale`` × cosine similarity; ``logit_scale`` defaults to the model's learned
    temperature (:func:`model_logit_scale`). ``curve`` is a
    :meth:`~msae_plugin.calibration.ReliabilityCurve.to_dict`. :func:`ladder_levels` lists the
    level keys.
    """
    if len(images) == 0:
        raise ValueError("empty image set: zero-shot accuracy needs at least one image")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    is_msae = hasattr(sae, "set_default_k")
    if ks is None:
        ks = [*sae.cfg.ladder, None] if is_msae else ["sae"]
    check_n_bins(n_bins)
    scale = model_logit_scale(model) if logit_scale is None else float(logit_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise CalibrationError(
            f"logit_scale={logit_scale!r} is not a finite positive number; pass the softmax "
            "temperature (CLIP's exp(logit_scale), e.g. 100) or None for the model's own."
        )
    labels_cpu = torch.as_tensor(labels).cpu()

    def run(splice: bool) -> tuple[float, ReliabilityCurve]:
        correct, chunks = 0, []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = images[start : start + batch_size]
                if splice:
                    feats = model.run_with_saes(
                        x, saes=[sae], use_error_term=False, exclude_special_tokens=exclude_cls,
                        return_type="normalized",
                    )
                else:
                    feats = model(x, return_type="normalized")
                logits = feats @ classifier.to(feats.dtype).T
                correct += int((logits.argmax(-1) == labels[start : start + batch_size]).sum())
                chunks.append(logits.detach().float().cpu())
        curve = reliability_curve(scale * torch.cat(chunks), labels_cpu, n_bins)
        return correct / len(images), curve

    original, original_curve = run(False)
    out: dict[str, Any] = {"original": original, "original_ece": original_curve.ece}
    curves = {"original": original_curve.to_dict()}
    saved_k = getattr(sae.cfg, "default_k", None)
    try:
        for k in ks:
            if is_msae:
                sae.set_default_k(k)
                key = "relu" if k is None else f"k={k}"
            else:
                key = "sae"
            acc, curve = run(True)
            out[key] = {
                "accuracy": acc,
                "kept": acc / original if original > 0 else float("nan"),
                "ece": curve.ece,
            }
            curves[key] = curve.to_dict()
    finally:
        if is_msae:
            sae.set_default_k(saved_k)
    out["calibration"] = {"n_bins": n_bins, "logit_scale": scale, "reliability": curves}
    return out


class VisionSAEEvaluator:
    """SAETrainer evaluator (called when logging to W&B): FVU, cosine, L0 and dead fraction on
    a fixed set of evaluation activations, through ``msae_plugin.metrics.evaluate_sae``."""

    def __init__(self, runner: VisionSAETrainingRunner) -> None:
        self.runner = runner

    def __call__(
        self, sae: Any, data_provider: Any, activation_scaler: ActivationScaler
    ) -> dict[str, Any]:
        from msae_plugin.metrics import flatten

        x, _ = self.runner.eval_activations()
        results = self.runner.evaluate(sae, activation_scaler(x))
        return {f"eval/{k}": v for k, v in flatten(results).items()}

