"""Entry point ``example_relu`` in the ``msae_plugin`` group (see pyproject.toml)."""

from __future__ import annotations

from msae_plugin.hookspecs import hookimpl
from msae_plugin.specs import ArchitectureSpec

ARCHITECTURE = "example_relu"


@hookimpl
def msae_register_architectures() -> list[ArchitectureSpec]:
    # imported lazily: the hook runs after sae_lens is imported, never at interpreter start
    from msae_example_plugin.sae import (
        ExampleReLUSAE,
        ExampleReLUSAEConfig,
        ExampleReLUTrainingSAE,
        ExampleReLUTrainingSAEConfig,
    )

    return [
        ArchitectureSpec(
            name=ARCHITECTURE,
            sae_class=ExampleReLUSAE,
            sae_config_class=ExampleReLUSAEConfig,
            training_sae_class=ExampleReLUTrainingSAE,
            training_config_class=ExampleReLUTrainingSAEConfig,
            description="example plugin: SAELens's standard ReLU SAE under another name",
        )
    ]
