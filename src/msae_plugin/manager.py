"""The plugin manager: discovers entry-point plugins and records who provided what.

pluggy's own ``load_setuptools_entrypoints`` stops at the first broken plugin; we load each entry
point separately so that one bad third-party plugin becomes a warning naming it, and the others
(including the built-ins) still load.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from functools import lru_cache

import pluggy

from msae_plugin import hookspecs


class PluginLoadWarning(RuntimeWarning):
    """A plugin could not be loaded or its hook raised; the rest keep working."""


def _distribution_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown>"
    try:
        return dist.metadata["Name"] or dist.name
    except Exception:  # pragma: no cover - exotic metadata
        return getattr(dist, "name", "<unknown>")


def create_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A fresh manager with our hookspecs; entry-point plugins loaded unless told otherwise."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.distributions = {}  # plugin name -> distribution name
    if load_entry_points:
        for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            dist = _distribution_name(ep)
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:
                warnings.warn(
                    f"msae-plugin: skipping plugin {ep.name!r} from distribution {dist!r} "
                    f"(entry point {ep.value!r}): it failed to load: {exc!r}. "
                    f"Fix or uninstall {dist!r}; the other plugins still work.",
                    PluginLoadWarning,
                    stacklevel=2,
                )
                continue
            pm.distributions[ep.name] = dist
    return pm


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide manager (created once)."""
    return create_plugin_manager()
