"""What a plugin hands to the host: small typed records, one per contributed component."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ArchitectureSpec:
    """An SAE architecture for SAELens's registries.

    ``name`` becomes the ``architecture`` string in ``cfg.json``. The inference pair goes into
    ``SAE_CLASS_REGISTRY``; the training pair (optional) into ``SAE_TRAINING_CLASS_REGISTRY``.
    ``architecture()`` of both config classes must return ``name``: SAELens saves
    ``cfg.architecture()`` and reloads the class registered under it, so registration refuses a
    mismatched spec (:class:`msae_plugin.errors.PluginSpecError`, reported as a warning).
    """

    name: str
    sae_class: type
    sae_config_class: type
    training_sae_class: type | None = None
    training_config_class: type | None = None
    description: str = ""


@dataclass(frozen=True)
class HookedModelSpec:
    """A ``HookedRootModule`` class SAELens-style runners can name by ``model_class_name``."""

    name: str
    model_class: type
    description: str = ""


@dataclass(frozen=True)
class DecoderSpec:
    """A decoder (e.g. an InversionView decoder) loadable by registry name."""

    name: str
    decoder_class: type
    config_class: type | None = None
    description: str = ""


@dataclass(frozen=True)
class Registration:
    """Provenance of one registered name: which plugin and distribution provided it."""

    kind: str  # "architecture" | "training_architecture" | "hooked_model" | "decoder"
    name: str
    plugin: str
    distribution: str
    obj: Any = None
