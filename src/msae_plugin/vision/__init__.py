"""Vision hook points: OpenCLIP towers as TransformerLens hooked models, and what builds on them
(activation providers for SAE training, SAE splicing / steering, attention-head ablation)."""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "HookedOpenCLIP": "msae_plugin.vision.hooked_clip",
    "HookedCLIPConfig": "msae_plugin.vision.hooked_clip",
    "load_open_clip": "msae_plugin.vision.loading",
    "PretrainedUnavailableError": "msae_plugin.vision.loading",
    "head_ablation_scan": "msae_plugin.vision.head_ablation",
    "HeadAblationResult": "msae_plugin.vision.head_ablation",
    "LatentEdit": "msae_plugin.vision.steering",
    "steered_logits": "msae_plugin.vision.steering",
    "zero_shot_accuracy_kept": "msae_plugin.vision.evaluation",
    "VisionSAERunnerConfig": "msae_plugin.vision.training",
    "VisionSAETrainingRunner": "msae_plugin.vision.training",
    "ImageActivationProvider": "msae_plugin.vision.activations",
    "TokenSelection": "msae_plugin.vision.token_selection",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'msae_plugin.vision' has no attribute {name!r}")
