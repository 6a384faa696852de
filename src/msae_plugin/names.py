"""Did-you-mean suggestions for names a user types (hooks, sites, releases, architectures).

This is a leaf module on purpose: the vision hooks (``vision.hook_names``), InversionView sites
and the CLI all turn a misspelt name into the same ``" Did you mean 'x'?"`` hint, and a helper
they all use must not live inside any one of them (importing InversionView would otherwise pull
in the vision package, and vice versa). It imports nothing from the project.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, valid: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The valid name most similar to ``name`` (``difflib`` ratio ≥ ``cutoff``), else ``None``."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=cutoff)
    return close[0] if close else None


def suggest(name: str, valid: Iterable[str], cutoff: float = 0.6) -> str:
    """`` Did you mean 'x'?`` (leading space included, ready to append to a sentence) for the
    closest valid name, or an empty string when nothing is close."""
    near = closest(name, valid, cutoff)
    return f" Did you mean {near!r}?" if near is not None else ""
