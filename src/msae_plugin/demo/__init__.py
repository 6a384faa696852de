"""The project's demos, in one place.

* :mod:`msae_plugin.demo.vision` — the main job (``msae demo``): an MSAE trained on patch
  activations of the embedded ``msae-tiny-clip`` model, read at every k.
* :mod:`msae_plugin.demo.synthetic` — ``msae demo --synthetic``: the same on SAELens's synthetic
  hierarchical data, with a SAELens TopK SAE for reference.

``msae_plugin.commands.demo`` only parses arguments and calls :func:`run_vision_demo` or
:func:`run_demo`. Imports here are lazy so that ``import msae_plugin.demo`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DemoConfig", "VisionDemoConfig", "run_demo", "run_vision_demo"]

_HOMES = {
    "DemoConfig": "msae_plugin.demo.synthetic",
    "run_demo": "msae_plugin.demo.synthetic",
    "VisionDemoConfig": "msae_plugin.demo.vision",
    "run_vision_demo": "msae_plugin.demo.vision",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'msae_plugin.demo' has no attribute {name!r}")
