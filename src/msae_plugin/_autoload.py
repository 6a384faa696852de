"""Activate msae-plugin inside SAELens without the user importing it.

Python runs ``msae_plugin_autoload.pth`` (installed at the root of site-packages) at every
interpreter start. It must cost almost nothing, so this module imports only ``sys`` and ``os``
(both already loaded by ``site``) and installs a one-shot finder on ``sys.meta_path``. When
``sae_lens`` is imported, the finder steps aside, lets the normal machinery build the module spec
and wraps ``exec_module`` *on that loader instance* so that our registration runs right after
``sae_lens/__init__.py`` has registered its built-ins. Replacing the loader object itself would
break ``importlib.resources.files("sae_lens")`` (SAELens's pretrained directory), hence the
instance patch.

Set ``MSAE_PLUGIN_DISABLE=1`` to switch the hook off. Registration errors never break
``import sae_lens``: they become warnings (see :func:`msae_plugin.registration.activate`).
"""

import os
import sys

_ENV_DISABLE = "MSAE_PLUGIN_DISABLE"
_TARGET = "sae_lens"


def _disabled() -> bool:
    return os.environ.get(_ENV_DISABLE, "").strip().lower() in {"1", "true", "yes", "on"}


def _activate() -> None:
    try:
        from msae_plugin.registration import activate

        activate()
    except Exception as exc:  # never break the host's import
        import warnings

        warnings.warn(
            f"msae-plugin could not register its components with sae_lens: {exc!r}. "
            f"Set {_ENV_DISABLE}=1 to silence this, or import msae_plugin to see the traceback.",
            RuntimeWarning,
            stacklevel=2,
        )


class _SaeLensFinder:
    """Duck-typed meta-path finder that fires once, for ``sae_lens`` only."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D401 - finder protocol
        if fullname != _TARGET:
            return None
        _remove()
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module, _original=original, _loader=loader):
            try:
                _original(module)
            finally:
                # restore the loader instance before registering so re-imports are plain
                try:
                    del _loader.exec_module
                except AttributeError:
                    pass
            _activate()

        loader.exec_module = exec_module
        return spec


def _remove() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _SaeLensFinder)]


def install() -> None:
    """Install the hook (idempotent). Called from the ``.pth`` file."""
    if _disabled():
        return
    if _TARGET in sys.modules:
        _activate()
        return
    if not any(isinstance(f, _SaeLensFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SaeLensFinder())
