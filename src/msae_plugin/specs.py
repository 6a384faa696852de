"""What a plugin hands to the host: small typed records, one per contributed component."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
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
class ReleaseSpec:
    """Trained SAEs that ``sae_lens.SAE.from_pretrained(name, sae_id)`` should resolve offline.

    ``saes`` maps each sae_id to a local folder in SAELens's layout (``cfg.json`` +
    ``sae_weights.safetensors`` [+ ``sparsity.safetensors``], as ``sae.save_model`` writes it);
    relative folders are taken relative to ``root``. The release becomes an entry of SAELens's
    pretrained directory (``get_pretrained_saes_directory()``) served by msae-plugin's local
    loader, so ``from_pretrained`` returns the same ``(sae, cfg_dict, log_sparsity)`` as for
    SAELens's own releases. ``model`` is the model the SAEs were trained on (the directory's
    ``model`` field); the ``expected_*`` and ``neuronpedia_id`` mappings fill the directory's
    fields of the same names (SAELens's defaults where an sae_id is missing).
    """

    name: str
    model: str
    saes: Mapping[str, str | Path]
    root: str | Path | None = None
    expected_var_explained: Mapping[str, float] = field(default_factory=dict)
    expected_l0: Mapping[str, float] = field(default_factory=dict)
    neuronpedia_id: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Registration:
    """Provenance of one registered name: which plugin and distribution provided it."""

    kind: str  # "architecture" | "training_architecture" | "hooked_model" | "decoder" | "release"
    name: str
    plugin: str
    distribution: str
    obj: Any = None
