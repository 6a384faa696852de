"""Hook specifications: the contract between msae-plugin and the plugins it hosts.

A plugin is any module (or object) with functions marked ``@hookimpl`` and named like the specs
below, advertised in the ``msae_plugin`` entry-point group of its distribution::

    [project.entry-points.msae_plugin]
    my_arch = "my_package.plugin"

Each hook returns a list of spec records (:mod:`msae_plugin.specs`). Built-in components are
provided by the same mechanism (``msae_plugin.builtin.*`` in this project's own entry points).
"""

from __future__ import annotations

import pluggy

from msae_plugin.specs import ArchitectureSpec, DecoderSpec, HookedModelSpec, ReleaseSpec

PROJECT_NAME = "msae_plugin"
ENTRY_POINT_GROUP = "msae_plugin"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def msae_register_architectures() -> list[ArchitectureSpec]:
    """SAE architectures (inference + optional training classes and their config classes).

    Each config class's ``architecture()`` must return the spec's ``name``, or the spec is refused.
    """


@hookspec
def msae_register_hooked_models() -> list[HookedModelSpec]:
    """``HookedRootModule`` classes (e.g. hooked OpenCLIP towers) addressable by name."""


@hookspec
def msae_register_decoders() -> list[DecoderSpec]:
    """Activation-conditioned decoders (e.g. InversionView) addressable by name."""


@hookspec
def msae_register_releases() -> list[ReleaseSpec]:
    """Trained SAEs in local folders, added to SAELens's pretrained directory under a release
    name so that ``SAE.from_pretrained(release, sae_id)`` loads them offline.

    A release name SAELens or another plugin already uses is refused with a warning naming the
    plugin; so is a spec whose folders lack ``cfg.json`` / ``sae_weights.safetensors``.
    """
