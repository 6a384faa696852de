"""Loading ``torch.save`` files from disk without trusting them.

Why a module of its own: trainer states (vision training), InversionView resume states and
``--activation`` files all come from disk, and a pickle can run any code when it is loaded. Every
such file goes through :func:`load_torch_file`, which unpickles tensors, numbers, strings and
plain containers only (``torch.load(..., weights_only=True)``), and turns torch's failures into
the project's errors: a file that wants other Python objects is *unsafe* (and we name what it
wanted), anything else that cannot be read is *corrupt*. Torch's own message is not passed on for
refused pickles: it suggests ``weights_only=False``, exactly what must not be done here.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from msae_plugin.errors import CheckpointError, UnsafeCheckpointError


def load_torch_file(
    path: str | Path, action: str, fix: str, map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load`` tensors-only. ``action`` completes "refusing to ..." / "cannot ..."
    (e.g. ``"resume from"``); ``fix`` is the sentence that tells the user what to do."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write and asks to file an issue;
            # for us such a file is either refused below or loads fine: nothing to report
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, weights_only=True, map_location=map_location)
    except pickle.UnpicklingError as exc:
        unsafe = unsafe_globals(path, exc)
        if unsafe:
            raise UnsafeCheckpointError(
                f"refusing to {action} {path}: it holds Python objects other than tensors and "
                f"plain data (it names {', '.join(unsafe)}), and unpickling it could run "
                f"arbitrary code. {fix} (never load it with weights_only=False)."
            ) from None
        raise CheckpointError(
            f"cannot {action} {path}: it is corrupt or not a file written by torch.save. {fix}."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as exc:
        # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"cannot {action} {path} ({type(exc).__name__}: {_first_line(exc)}). {fix}."
        ) from None


def unsafe_globals(path: Path, exc: Exception) -> list[str]:
    """Names of the Python callables a refused pickle wanted to import; empty when the file is
    merely corrupt. Torch lists them for its zip format; a bare pickle is scanned opcode by
    opcode with :mod:`pickletools` (which parses, never executes)."""
    try:
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a torch zip file: scan it as a bare pickle instead
        found = _globals_in_bare_pickle(path)
    if found:
        return found
    named = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return [named.group(1)] if named else []


def _globals_in_bare_pickle(path: Path) -> list[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL in a plain pickle stream; ``[]`` when the
    bytes are not a pickle at all (a damaged or foreign file)."""
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as fh:
            for op, arg, _ in pickletools.genops(fh):
                if isinstance(arg, str):
                    strings.append(arg)
                if op.name == "GLOBAL" and isinstance(arg, str):
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    names.append(".".join(strings[-2:]) if len(strings) >= 2 else "a Python global")
    except Exception:  # not a valid pickle stream
        return []
    return names


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
