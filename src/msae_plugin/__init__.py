"""msae-plugin: Matryoshka SAEs and friends as native SAELens components.

Importing this package is deliberately cheap (no torch, no sae_lens): the ``.pth`` autoload hook
imports ``msae_plugin._autoload`` at every interpreter start. Heavy objects are reached lazily::

    import msae_plugin
    msae_plugin.register()          # explicit, idempotent activation (python -S, embedded use)
    msae_plugin.MSAE                # the inference SAE class (registers on first access)

No imports at module level (not even ``typing``): this file runs at every interpreter start.
"""

__version__ = "0.1.0"

_LAZY = {
    "MSAE": "msae_plugin.msae.sae",
    "MSAEConfig": "msae_plugin.msae.config",
    "MSAETrainingSAE": "msae_plugin.msae.training_sae",
    "MSAETrainingSAEConfig": "msae_plugin.msae.config",
    "build_ladder": "msae_plugin.msae.ladder",
}


def register() -> dict:
    """Register every plugin's components with SAELens (idempotent). Returns the provenance map."""
    from msae_plugin.registration import activate

    return activate()


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        register()
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'msae_plugin' has no attribute {name!r}")


__all__ = ["__version__", "register", *_LAZY]
