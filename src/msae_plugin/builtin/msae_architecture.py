"""Built-in plugin: the Matryoshka SAE (Zaigrajew et al. 2025) architectures."""

from __future__ import annotations

from msae_plugin.hookspecs import hookimpl
from msae_plugin.specs import ArchitectureSpec


@hookimpl
def msae_register_architectures() -> list[ArchitectureSpec]:
    from msae_plugin.msae.config import MSAEConfig, MSAETrainingSAEConfig
    from msae_plugin.msae.loading import install_base_loader_dispatch
    from msae_plugin.msae.sae import MSAE
    from msae_plugin.msae.training_sae import MSAETrainingSAE

    # SAE.load_from_disk / TrainingSAE.load_from_disk of an msae checkpoint -> MSAE's checked load
    install_base_loader_dispatch()

    return [
        ArchitectureSpec(
            name="msae",
            sae_class=MSAE,
            sae_config_class=MSAEConfig,
            training_sae_class=MSAETrainingSAE,
            training_config_class=MSAETrainingSAEConfig,
            description="Matryoshka SAE: nested TopK levels over one dictionary (arXiv 2502.20578)",
        )
    ]
