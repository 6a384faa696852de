"""Hook-name bookkeeping for the hooked CLIP: which tower a name belongs to, which block it is in,
and errors that suggest the nearest valid name.

TransformerLens silently caches nothing for a misspelt ``names_filter`` entry; for a model with
~300 hook names that is an easy hour lost, so every name a user passes is checked here first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from msae_plugin.errors import UnknownHookError
from msae_plugin.names import suggest  # re-exported: vision.splicing and older callers use it

__all__ = ["TEXT_PREFIX", "block_of", "check_names", "suggest", "tower_of"]

TEXT_PREFIX = "text."
_BLOCK = re.compile(r"^(?:text\.)?blocks\.(\d+)\.")


def tower_of(name: str) -> str:
    """``"text"`` for names under the text prefix, else ``"image"``."""
    return "text" if name.startswith(TEXT_PREFIX) else "image"


def block_of(name: str) -> int | None:
    """Block index of a ``blocks.{i}.*`` name (either tower), or ``None`` for model-level hooks."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


def check_names(
    names: Iterable[str],
    valid: Iterable[str],
    *,
    tower: str | None = None,
    stop_at_layer: int | None = None,
    n_layers: dict[str, int] | None = None,
) -> None:
    """Raise :class:`UnknownHookError` for any name that would never fire on this run."""
    valid = list(valid)
    valid_set = set(valid)
    for name in names:
        if name not in valid_set:
            hint = suggest(name, valid)
            raise UnknownHookError(
                f"unknown hook name {name!r}.{hint} List the valid names with "
                "`model.hook_dict.keys()` (docs/vision-hooks.md has the table)."
            )
        if tower is not None and tower_of(name) != tower:
            other = "text" if tower == "image" else "image"
            raise UnknownHookError(
                f"hook {name!r} belongs to the {other} tower but this run feeds "
                f"{'images' if tower == 'image' else 'text tokens'}; it would never fire. "
                + (
                    f"Use the image-tower name {name[len(TEXT_PREFIX):]!r} or pass tokens."
                    if other == "text"
                    else f"Use the text-tower name {TEXT_PREFIX + name!r} or pass images."
                )
            )
        layer = block_of(name)
        if stop_at_layer is not None and n_layers is not None:
            total = n_layers[tower_of(name)]
            stop = stop_at_layer if stop_at_layer >= 0 else total + stop_at_layer
            if layer is None and not name.endswith(("hook_embed", "hook_pos_embed")):
                raise UnknownHookError(
                    f"hook {name!r} runs after the last block, but stop_at_layer={stop_at_layer} "
                    "stops before it; drop stop_at_layer to capture it"
                )
            if layer is not None and layer >= stop:
                raise UnknownHookError(
                    f"hook {name!r} is in block {layer}, but stop_at_layer={stop_at_layer} runs "
                    f"only blocks 0..{stop - 1}; use stop_at_layer={layer + 1} or later"
                )
