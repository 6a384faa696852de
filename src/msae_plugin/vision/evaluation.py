"""The MSAE paper's downstream metric: zero-shot accuracy kept when the SAE's reconstruction
replaces the activation at its hook (no error term), at each k of the ladder.

Reconstruction metrics (FVU, cosine) say how close the reconstruction is; this says whether what
is lost matters to the model's task. "Kept" is spliced accuracy / original accuracy.

:class:`VisionSAEEvaluator` is the reconstruction side during training: SAELens's ``SAETrainer``
calls it (when logging to W&B) for FVU / cosine / L0 / dead latents on held-out activations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sae_lens.training.activation_scaler import ActivationScaler

    from msae_plugin.vision.training import VisionSAETrainingRunner


def zero_shot_accuracy_kept(
    model: Any,
    sae: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    classifier: torch.Tensor,
    ks: Sequence[int | None] | None = None,
    exclude_cls: bool = False,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Zero-shot accuracy of ``model`` alone and with ``sae``'s reconstruction spliced in.

    For an MSAE, ``ks`` defaults to its ladder plus the ReLU path (``None``); other SAEs are
    evaluated once with their own ``encode`` (key ``"sae"``). Returns
    ``{"original": acc, "k=64": {"accuracy": ..., "kept": ...}, ...}``.
    """
    if len(images) == 0:
        raise ValueError("empty image set: zero-shot accuracy needs at least one image")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    is_msae = hasattr(sae, "set_default_k")
    if ks is None:
        ks = [*sae.cfg.ladder, None] if is_msae else ["sae"]

    def run(splice: bool) -> float:
        correct = 0
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
        return correct / len(images)

    original = run(False)
    out: dict[str, Any] = {"original": original}
    saved_k = getattr(sae.cfg, "default_k", None)
    try:
        for k in ks:
            if is_msae:
                sae.set_default_k(k)
                key = "relu" if k is None else f"k={k}"
            else:
                key = "sae"
            acc = run(True)
            out[key] = {"accuracy": acc, "kept": acc / original if original > 0 else float("nan")}
    finally:
        if is_msae:
            sae.set_default_k(saved_k)
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

