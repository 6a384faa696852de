"""Built-in plugin: the hooked OpenCLIP model, addressable as ``model_class_name="HookedOpenCLIP"``."""

from __future__ import annotations

from msae_plugin.hookspecs import hookimpl
from msae_plugin.specs import HookedModelSpec


@hookimpl
def msae_register_hooked_models() -> list[HookedModelSpec]:
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP

    return [
        HookedModelSpec(
            name="HookedOpenCLIP",
            model_class=HookedOpenCLIP,
            description="OpenCLIP ViT image + text towers with TransformerLens hook points",
        )
    ]
