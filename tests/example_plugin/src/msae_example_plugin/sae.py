"""A tiny but real SAE architecture: SAELens's standard ReLU SAE under the name ``example_relu``."""

from __future__ import annotations

from dataclasses import dataclass

from sae_lens.saes.sae import SAEConfig
from sae_lens.saes.standard_sae import (
    StandardSAE,
    StandardSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
)

ARCHITECTURE = "example_relu"


@dataclass
class ExampleReLUSAEConfig(StandardSAEConfig):
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class ExampleReLUSAE(StandardSAE):
    """Inference SAE; all behaviour inherited from :class:`StandardSAE`."""


@dataclass
class ExampleReLUTrainingSAEConfig(StandardTrainingSAEConfig):
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def get_inference_config_class(self) -> type[SAEConfig]:
        # SAELens's default looks the name up in its registry, which only works once this
        # architecture is registered; returning the class directly works in every case.
        return ExampleReLUSAEConfig


class ExampleReLUTrainingSAE(StandardTrainingSAE):
    """Training SAE; all behaviour inherited from :class:`StandardTrainingSAE`."""
