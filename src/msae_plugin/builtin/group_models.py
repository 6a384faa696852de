"""Built-in plugin: the finite-group composition network, addressable as
``model_class_name="GroupMLP"`` (the Chughtai et al. 2023 MLP with TransformerLens hook points)."""

from __future__ import annotations

from msae_plugin.hookspecs import hookimpl
from msae_plugin.specs import HookedModelSpec


@hookimpl
def msae_register_hooked_models() -> list[HookedModelSpec]:
    from msae_plugin.groups.model import GroupMLP

    return [
        HookedModelSpec(
            name="GroupMLP",
            model_class=GroupMLP,
            description="one-hidden-layer MLP computing x·y on a finite group (S4, S5, A5...), "
                        "hooks hook_embed_l/r, hook_pre, hook_post, hook_logits",
        )
    ]
