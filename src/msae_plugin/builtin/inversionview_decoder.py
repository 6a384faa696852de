"""Built-in plugin: the InversionView decoder (Huang et al. 2024), registry name ``inversionview``."""

from __future__ import annotations

from msae_plugin.hookspecs import hookimpl
from msae_plugin.specs import DecoderSpec


@hookimpl
def msae_register_decoders() -> list[DecoderSpec]:
    from msae_plugin.inversionview.decoder import DecoderConfig, InversionViewDecoder

    return [
        DecoderSpec(
            name="inversionview",
            decoder_class=InversionViewDecoder,
            config_class=DecoderConfig,
            description="activation-conditioned input decoder (arXiv 2405.17653)",
        )
    ]
