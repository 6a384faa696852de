"""Selective remapping of concepts during adaptation (Lim et al. 2025, PatchSAE): one SAE
trained on the base model, run on a base and an adapted model. See docs/remapping.md."""

from msae_plugin.remapping.comparison import RemappingResult, check_alignment, compare_models
from msae_plugin.remapping.counts import ActivationSummary, summarize
from msae_plugin.remapping.groups import improvement_rate, latent_groups
from msae_plugin.remapping.masking import masking_curve, per_class_accuracy, selection_masks
from msae_plugin.remapping.plots import plot_groups, plot_masking, plot_patch_view, plot_statistics

__all__ = [
    "ActivationSummary", "RemappingResult", "check_alignment", "compare_models",
    "improvement_rate", "latent_groups", "masking_curve", "per_class_accuracy", "plot_groups",
    "plot_masking", "plot_patch_view", "plot_statistics", "selection_masks", "summarize",
]
