"""Plugin releases inside SAELens's pretrained directory, added lazily.

SAELens resolves ``SAE.from_pretrained(release, sae_id)`` through
``get_pretrained_saes_directory()``, a ``functools.cache``-d parse of its 170-release YAML file
(1-2 s), and through the loader named by the entry's ``conversion_func`` in
``NAMED_PRETRAINED_SAE_LOADERS``. Parsing that file while ``sae_lens`` is imported (when plugins
register) would add those seconds to every ``import sae_lens``, so instead the directory
function is wrapped in the SAELens modules that bound it by name: the wrapper calls the cached
original and adds the plugin releases to the dict it returns (once per dict; after
``cache_clear()`` the rebuilt dict gets them again). A release whose name is already in the
directory (one of SAELens's own) is refused then, with a warning naming the plugin.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msae_plugin.errors import PluginSpecError
from msae_plugin.registration import PluginHookWarning
from msae_plugin.specs import ReleaseSpec

#: the ``conversion_func`` of every plugin release: msae-plugin's local-folder loader
LOADER_NAME = "msae_plugin_local"
_MARK = "__msae_releases__"
_SOURCE = "sae_lens.loading.pretrained_saes_directory"
_FUNC = "get_pretrained_saes_directory"


@dataclass
class PendingRelease:
    """A validated release waiting to be (or already) added to SAELens's directory."""

    spec: ReleaseSpec
    plugin: str
    distribution: str
    repo_id: str  # the common root folder of the release's SAEs
    saes_map: dict[str, str]  # sae_id -> folder relative to repo_id
    lookup: Any = None  # the PretrainedSAELookup once built


#: release name -> release, for every release accepted from a plugin
RELEASES: dict[str, PendingRelease] = {}
_lock = threading.RLock()


class ReleaseClashWarning(PluginHookWarning):
    """A plugin release's name is one of SAELens's own releases; it was not added."""


def resolve_folders(spec: ReleaseSpec) -> dict[str, Path]:
    """sae_id -> absolute folder; :class:`PluginSpecError` naming what is wrong otherwise."""
    if not isinstance(spec.name, str) or not spec.name.strip():
        raise PluginSpecError(f"ReleaseSpec name must be a non-empty string, got {spec.name!r}.")
    if not isinstance(spec.model, str) or not spec.model:
        raise PluginSpecError(
            f"ReleaseSpec {spec.name!r}: model must be the name of the model the SAEs were "
            f"trained on (a non-empty string), got {spec.model!r}."
        )
    if not hasattr(spec.saes, "items") or len(spec.saes) == 0:
        raise PluginSpecError(
            f"ReleaseSpec {spec.name!r}: saes must be a non-empty mapping sae_id -> folder, got "
            f"{spec.saes!r}."
        )
    root = Path(spec.root) if spec.root is not None else None
    folders: dict[str, Path] = {}
    for sae_id, folder in spec.saes.items():
        if not isinstance(sae_id, str) or not sae_id:
            raise PluginSpecError(
                f"ReleaseSpec {spec.name!r}: sae_id {sae_id!r} is not a non-empty string."
            )
        path = Path(folder)
        if not path.is_absolute():
            if root is None:
                raise PluginSpecError(
                    f"ReleaseSpec {spec.name!r}: folder {str(folder)!r} of sae_id {sae_id!r} is "
                    "relative but the spec has no root; pass an absolute folder or root=."
                )
            path = root / path
        path = path.resolve()
        for name in ("cfg.json", "sae_weights.safetensors"):
            if not (path / name).is_file():
                raise PluginSpecError(
                    f"ReleaseSpec {spec.name!r}: sae_id {sae_id!r} points to {path}, which has "
                    f"no {name}. Point it to a folder written by `sae.save_model(folder)`."
                )
        folders[sae_id] = path
    return folders


def pending_release(spec: ReleaseSpec, plugin: str, distribution: str) -> PendingRelease:
    """Validate ``spec`` and lay it out as SAELens's directory wants it (root + relative ids)."""
    folders = resolve_folders(spec)
    root = Path(os.path.commonpath([str(p) for p in folders.values()]))
    saes_map = {i: p.relative_to(root).as_posix() for i, p in folders.items()}
    return PendingRelease(spec, plugin, distribution, str(root), saes_map)


def _lookup(rel: PendingRelease) -> Any:
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup

    spec, ids = rel.spec, list(rel.saes_map)
    return PretrainedSAELookup(  # SAELens's YAML defaults where the spec says nothing
        release=spec.name,
        repo_id=rel.repo_id,
        model=spec.model,
        conversion_func=LOADER_NAME,
        saes_map=dict(rel.saes_map),
        expected_var_explained={i: spec.expected_var_explained.get(i, 1.0) for i in ids},
        expected_l0={i: spec.expected_l0.get(i, 0.0) for i in ids},
        neuronpedia_id={i: spec.neuronpedia_id.get(i) for i in ids},  # type: ignore[misc]
        norm_scaling_factor={},
        config_overrides=None,
    )


def add_to(directory: dict[str, Any]) -> None:
    """Add every accepted release missing from ``directory``; refuse (and forget) a release
    whose name SAELens already uses there."""
    from msae_plugin.registration import REGISTRATIONS

    with _lock:
        for name, rel in list(RELEASES.items()):
            if rel.lookup is None:
                rel.lookup = _lookup(rel)
            present = directory.get(name)
            if present is rel.lookup:
                continue
            if present is None:
                directory[name] = rel.lookup
                continue
            del RELEASES[name]
            REGISTRATIONS.pop(("release", name), None)
            warnings.warn(
                f"msae-plugin: release {name!r} from plugin {rel.plugin!r} "
                f"({rel.distribution}) clashes with SAELens's own release of that name "
                f"(repo {getattr(present, 'repo_id', '?')}); keeping SAELens's. Rename the "
                "plugin's release to load it.",
                ReleaseClashWarning,
                stacklevel=4,
            )


def install_directory_hook() -> None:
    """Wrap ``get_pretrained_saes_directory`` wherever SAELens bound it (idempotent)."""
    import importlib

    source = importlib.import_module(_SOURCE)
    current = getattr(source, _FUNC)
    if getattr(current, _MARK, False):
        original = current.__wrapped__
    else:
        original = current

        def get_pretrained_saes_directory() -> dict[str, Any]:
            directory = original()
            add_to(directory)
            return directory

        get_pretrained_saes_directory.__wrapped__ = original  # type: ignore[attr-defined]
        get_pretrained_saes_directory.__doc__ = original.__doc__
        get_pretrained_saes_directory.cache_clear = original.cache_clear  # type: ignore[attr-defined]
        get_pretrained_saes_directory.cache_info = original.cache_info  # type: ignore[attr-defined]
        setattr(get_pretrained_saes_directory, _MARK, True)
        current = get_pretrained_saes_directory
    for name, module in list(sys.modules.items()):
        if (name == "sae_lens" or name.startswith("sae_lens.")) and getattr(
            module, _FUNC, None
        ) is original:
            setattr(module, _FUNC, current)


def install_loaders() -> None:
    """Put the local-folder loader and config getter into SAELens's named registries."""
    from sae_lens.loading.pretrained_sae_loaders import (
        NAMED_PRETRAINED_SAE_CONFIG_GETTERS,
        NAMED_PRETRAINED_SAE_LOADERS,
    )

    from msae_plugin.releases.loader import local_config_getter, local_loader

    NAMED_PRETRAINED_SAE_LOADERS.setdefault(LOADER_NAME, local_loader)
    NAMED_PRETRAINED_SAE_CONFIG_GETTERS.setdefault(LOADER_NAME, local_config_getter)


def directory_built() -> bool:
    """Whether SAELens has already parsed its directory in this process (then adding a release
    costs nothing and clashes can be reported at once)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory.cache_info().currsize > 0
