"""Concept bias analysis of downstream classifiers on CLIP embeddings (MSAE paper §5): clamp a
concept's SAE latents up or down and measure decision flips and accuracy change per group
(``analysis``), with an embedded demonstration on digit scenes (``demo``). See docs/bias.md."""

from msae_plugin.bias.analysis import (
    BiasResult,
    EditStats,
    LinearProbe,
    clamp_embeddings,
    concept_bias,
    concept_values,
    resolve_latents,
)

__all__ = [
    "BiasResult", "EditStats", "LinearProbe", "clamp_embeddings", "concept_bias",
    "concept_values", "resolve_latents",
]
