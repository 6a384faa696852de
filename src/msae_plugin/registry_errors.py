"""Helpful lookups in SAELens's registries (nearest-name suggestions, known names listed)."""

from __future__ import annotations

from msae_plugin.errors import UnknownArchitectureError
from msae_plugin.names import suggest


def unknown_architecture(name: object, training: bool = False) -> UnknownArchitectureError:
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    known = sorted(SAE_TRAINING_CLASS_REGISTRY if training else SAE_CLASS_REGISTRY)
    hint = suggest(str(name), known)
    return UnknownArchitectureError(
        f"unknown SAE architecture {name!r}.{hint} Known {'training ' if training else ''}"
        f"architectures: {', '.join(known)}. If it comes from a plugin, install that plugin "
        "(`msae plugins` lists what is registered)."
    )


def get_sae_class(name: str):
    """``sae_lens.get_sae_class`` with a readable error for unknown names."""
    from sae_lens.registry import SAE_CLASS_REGISTRY

    if name not in SAE_CLASS_REGISTRY:
        raise unknown_architecture(name)
    return SAE_CLASS_REGISTRY[name]


def get_sae_training_class(name: str):
    """``sae_lens.get_sae_training_class`` with a readable error for unknown names."""
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    if name not in SAE_TRAINING_CLASS_REGISTRY:
        raise unknown_architecture(name, training=True)
    return SAE_TRAINING_CLASS_REGISTRY[name]
