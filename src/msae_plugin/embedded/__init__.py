"""The embedded default CLIP model, "msae-tiny-clip", and its digit-scene data.

A small ``open_clip.model.CLIP`` trained by ``scripts/train_embedded_clip.py`` on synthetic scenes
of real handwritten digits (scikit-learn's ``load_digits``) with hierarchical captions; its fp16
weights ship as package data. See ``MODEL_CARD.md`` beside this file and
``docs/embedded-model.md``::

    from msae_plugin.embedded import load_embedded_clip, make_digit_scenes, normalize
    model, tokenizer = load_embedded_clip()
    scenes = make_digit_scenes(8, "test", seed=1)
    feats = model.encode_image(normalize(scenes.images))

Names are resolved lazily, so importing this package does not import torch or open_clip.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "DigitScenes": "dataset",
    "make_digit_scenes": "dataset",
    "normalize": "dataset",
    "CLASS_NAMES": "dataset",
    "ZERO_SHOT_TEMPLATES": "dataset",
    "IMAGE_MEAN": "dataset",
    "IMAGE_STD": "dataset",
    "IMAGE_SIZE": "dataset",
    "ATTRIBUTE_NAMES": "dataset",
    "WordTokenizer": "tokenizer",
    "EMBEDDED_MODEL_NAME": "model",
    "embedded_model_config": "model",
    "build_embedded_clip": "model",
    "load_embedded_clip": "model",
    "default_weights_path": "model",
    "build_zero_shot_classifier": "zero_shot",
    "zero_shot_logits": "zero_shot",
    "zero_shot_accuracy": "zero_shot",
    "encode_scene_images": "zero_shot",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
