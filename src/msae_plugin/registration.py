"""Bridge from plugin hooks into SAELens's registries.

SAELens has no discovery mechanism of its own: its registries are module-level dicts filled by
``register_sae_class`` / ``register_sae_training_class``, which raise ``ValueError`` on a duplicate
name. :func:`activate` is therefore guarded by membership checks (safe to call any number of times,
before or after ``sae_lens`` was imported by someone else), calls each plugin's hook separately (a
raising hook becomes a warning naming the plugin) and records provenance for ``msae plugins``.

Hooked models and decoders have no SAELens registry; they live in :data:`HOOKED_MODELS` and
:data:`DECODERS` here. Releases (trained SAEs in local folders) go into SAELens's pretrained
directory and named-loader registries (:mod:`msae_plugin.releases.directory`).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

from msae_plugin.errors import PluginSpecError
from msae_plugin.specs import ArchitectureSpec, DecoderSpec, Registration, ReleaseSpec

HOOKED_MODELS: dict[str, type] = {}
DECODERS: dict[str, DecoderSpec] = {}
REGISTRATIONS: dict[tuple[str, str], Registration] = {}

_lock = threading.RLock()
_active = False


class PluginHookWarning(RuntimeWarning):
    """A plugin's hook raised or returned something unusable; it was skipped."""


def _call_each(pm: Any, hook_name: str) -> list[tuple[str, str, Any]]:
    """Call every implementation of ``hook_name`` separately: (plugin, dist, result) triples."""
    results = []
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        plugin_name = impl.plugin_name
        dist = pm.distributions.get(plugin_name, "<registered in code>")
        try:
            result = impl.function()
        except Exception as exc:
            warnings.warn(
                f"msae-plugin: plugin {plugin_name!r} (distribution {dist!r}) raised in "
                f"{hook_name}(): {exc!r}. Its components are not registered; fix or uninstall "
                f"{dist!r}.",
                PluginHookWarning,
                stacklevel=3,
            )
            continue
        if result is None:
            continue
        results.append((plugin_name, dist, list(result)))
    return results


def _check_config_name(spec: ArchitectureSpec, field: str, config_cls: Any) -> None:
    """Refuse a config class whose ``architecture()`` is not the name it is registered under.

    SAELens writes ``cfg.architecture()`` into ``cfg.json`` and looks the class up by that name
    when loading: a mismatch saves the SAE as another architecture and reloads it as the wrong
    class, silently.
    """
    where = f"{config_cls.__module__}.{config_cls.__qualname__}" if isinstance(
        config_cls, type) else repr(config_cls)
    arch = getattr(config_cls, "architecture", None)
    if not callable(arch):
        raise PluginSpecError(
            f"ArchitectureSpec {spec.name!r}: {field}={where} has no architecture() classmethod; "
            "pass an SAELens SAEConfig / TrainingSAEConfig subclass."
        )
    try:
        got = arch()
    except Exception as exc:
        raise PluginSpecError(
            f"ArchitectureSpec {spec.name!r}: {field}={where}.architecture() raised {exc!r}; it "
            f"must be a classmethod returning {spec.name!r}."
        ) from exc
    if got != spec.name:
        raise PluginSpecError(
            f"ArchitectureSpec {spec.name!r}: {field}={where}.architecture() returns {got!r}, "
            f"so SAEs would be saved as {got!r} and reload as another class. Make "
            f"architecture() return {spec.name!r}, or register the spec under name={got!r}."
        )


def _register_architecture(spec: ArchitectureSpec, plugin: str, dist: str) -> None:
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    _check_config_name(spec, "sae_config_class", spec.sae_config_class)
    pairs: list[tuple[str, dict, tuple[type, type] | None]] = [
        ("architecture", SAE_CLASS_REGISTRY, (spec.sae_class, spec.sae_config_class)),
    ]
    if spec.training_sae_class is not None:
        if spec.training_config_class is None:
            raise PluginSpecError(
                f"ArchitectureSpec {spec.name!r} has training_sae_class but no "
                "training_config_class; pass the TrainingSAEConfig subclass as well."
            )
        _check_config_name(spec, "training_config_class", spec.training_config_class)
        pairs.append(
            (
                "training_architecture",
                SAE_TRAINING_CLASS_REGISTRY,
                (spec.training_sae_class, spec.training_config_class),
            )
        )
    for kind, registry, entry in pairs:
        existing = registry.get(spec.name)
        if existing is None:
            registry[spec.name] = entry
        elif existing != entry:
            warnings.warn(
                f"msae-plugin: {kind} name {spec.name!r} from plugin {plugin!r} ({dist}) is "
                f"already registered to {existing[0].__module__}.{existing[0].__qualname__}; "
                "keeping the existing one. Rename the plugin's architecture to resolve this.",
                PluginHookWarning,
                stacklevel=3,
            )
            continue
        REGISTRATIONS[(kind, spec.name)] = Registration(kind, spec.name, plugin, dist, entry[0])


def _register_simple(
    kind: str, name: str, obj: Any, table: dict, plugin: str, dist: str, value: Any
) -> None:
    existing = table.get(name)
    if existing is not None and existing != value:
        warnings.warn(
            f"msae-plugin: {kind} name {name!r} from plugin {plugin!r} ({dist}) is already "
            "taken; keeping the existing one.",
            PluginHookWarning,
            stacklevel=3,
        )
        return
    table[name] = value
    REGISTRATIONS[(kind, name)] = Registration(kind, name, plugin, dist, obj)


def _guarded(plugin: str, dist: str, what: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as exc:
        warnings.warn(
            f"msae-plugin: could not register {what} from plugin {plugin!r} ({dist}): {exc!r}",
            PluginHookWarning,
            stacklevel=3,
        )


def activate(pm: Any = None) -> dict[tuple[str, str], Registration]:
    """Register every plugin's components with SAELens. Idempotent; returns provenance."""
    import sae_lens  # noqa: F401  (its import may itself run activate(); see _active)

    from msae_plugin.manager import get_plugin_manager

    global _active
    with _lock:
        if _active:  # re-entered from inside an activation (sae_lens import hook)
            return dict(REGISTRATIONS)
        _active = True
        try:
            _activate_all(pm or get_plugin_manager())
        finally:
            _active = False
        return dict(REGISTRATIONS)


def _activate_all(pm: Any) -> None:
    """Call each hook of each plugin and register what it returns."""
    for plugin, dist, specs in _call_each(pm, "msae_register_architectures"):
        for spec in specs:
            _guarded(
                plugin, dist, f"architecture {getattr(spec, 'name', spec)!r}",
                lambda s=spec, p=plugin, d=dist: _register_architecture(s, p, d),
            )
    for plugin, dist, specs in _call_each(pm, "msae_register_hooked_models"):
        for spec in specs:
            _guarded(
                plugin, dist, f"hooked model {getattr(spec, 'name', spec)!r}",
                lambda s=spec, p=plugin, d=dist: _register_simple(
                    "hooked_model", s.name, s.model_class, HOOKED_MODELS, p, d, s.model_class
                ),
            )
    for plugin, dist, specs in _call_each(pm, "msae_register_decoders"):
        for spec in specs:
            _guarded(
                plugin, dist, f"decoder {getattr(spec, 'name', spec)!r}",
                lambda s=spec, p=plugin, d=dist: _register_simple(
                    "decoder", s.name, s.decoder_class, DECODERS, p, d, s
                ),
            )
    for plugin, dist, specs in _call_each(pm, "msae_register_releases"):
        for spec in specs:
            _guarded(
                plugin, dist, f"release {getattr(spec, 'name', spec)!r}",
                lambda s=spec, p=plugin, d=dist: _register_release(s, p, d),
            )


def _register_release(spec: ReleaseSpec, plugin: str, dist: str) -> None:
    """Accept a release (folders checked now; added to SAELens's directory when it is built)."""
    from msae_plugin.releases import directory as rd

    if not isinstance(spec, ReleaseSpec):
        raise PluginSpecError(
            f"msae_register_releases() returned {spec!r}; return ReleaseSpec records "
            "(msae_plugin.specs.ReleaseSpec)."
        )
    rel = rd.pending_release(spec, plugin, dist)
    rd.install_loaders()
    rd.install_directory_hook()
    existing = rd.RELEASES.get(spec.name)
    if existing is not None:
        if existing.spec != spec:
            warnings.warn(
                f"msae-plugin: release name {spec.name!r} from plugin {plugin!r} ({dist}) is "
                f"already registered by plugin {existing.plugin!r} ({existing.distribution}); "
                "keeping the existing one. Rename the plugin's release to resolve this.",
                PluginHookWarning,
                stacklevel=3,
            )
        return
    with rd._lock:
        rd.RELEASES[spec.name] = rel
        REGISTRATIONS[("release", spec.name)] = Registration("release", spec.name, plugin, dist, spec)
    if rd.directory_built():  # cheap now: add it (and report a clash) at once
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

        get_pretrained_saes_directory()


def resolve_releases() -> dict[str, Any]:
    """Build SAELens's pretrained directory (1-2 s, once per process) with the plugin releases
    in it; a release whose name SAELens already uses is dropped with a warning. Returns the
    directory."""
    activate()
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def known_architectures(training: bool = False) -> list[str]:
    """Names in SAELens's inference (or training) registry, sorted."""
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    return sorted(SAE_TRAINING_CLASS_REGISTRY if training else SAE_CLASS_REGISTRY)
