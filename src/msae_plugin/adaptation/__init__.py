"""Adapted versions of a CLIP model (issue 12, part 1): prompt learning and fine-tuning.

Each method is one library call returning a ``msae_plugin.zero_shot_model.ZeroShotModel`` whose
``model`` is a ``HookedOpenCLIP`` (visual prompts, if any, inside it), so every analysis that
runs hooks on the base model runs unchanged on the adapted one. The task (rotated digit scenes,
base classes 0-4 / novel 5-9) is in :mod:`.task`; trained models ship as package data
(:func:`load_adapted_model`). See docs/adaptation.md.
"""

from __future__ import annotations

from msae_plugin.adaptation.finetune import finetune_image_tower, tuned_parameter_names
from msae_plugin.adaptation.prompt_learning import train_prompts
from msae_plugin.adaptation.saving import (
    SHIPPED_MODELS,
    load_adapted_model,
    load_base_model,
    save_adapted_model,
)
from msae_plugin.adaptation.task import (
    BASE_CLASSES,
    DEFAULT_SHIFT,
    NOVEL_CLASSES,
    SHIFTS,
    TaskData,
    class_subset_model,
    evaluate,
    make_task_data,
)
from msae_plugin.adaptation.text_prompts import TextContext
from msae_plugin.adaptation.visual_prompts import VisualPrompts

__all__ = [
    "BASE_CLASSES", "DEFAULT_SHIFT", "NOVEL_CLASSES", "SHIFTS", "SHIPPED_MODELS", "TaskData",
    "TextContext", "VisualPrompts", "class_subset_model", "evaluate", "finetune_image_tower",
    "load_adapted_model", "load_base_model", "make_task_data", "save_adapted_model",
    "train_prompts", "tuned_parameter_names",
]
