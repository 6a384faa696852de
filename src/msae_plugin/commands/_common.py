"""Argument types and output-folder checks shared by the sub-commands.

Numeric arguments are checked by argparse itself (``type=positive_int``), so a bad value gives
the usual usage line and exit status 2 before any model is loaded. Output folders are created
and test-written before the work starts, so a typo in ``--out`` costs a second, not a
four-minute run that fails when it saves.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from msae_plugin.errors import OutputPathError


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def prepare_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Create ``path`` (and parents) and prove it is writable; returns it as a ``Path``.

    Raises :class:`OutputPathError` naming the option, the offending path component and the fix
    when the folder cannot be created (a file is in the way) or written (permissions, read-only
    file system).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputPathError(
            f"{option} {out} is a file, not a folder. Pass a folder path (it is created if "
            "missing), or move the file away."
        )
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputPathError(
            f"{option} {out} cannot be created: {blocker} is a file, not a folder. Pass a path "
            "whose parent folders are folders."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".msae-write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(
            f"{option} {out} is not writable ({exc.strerror or exc}). Pass a folder you can "
            "write to, or fix its permissions."
        ) from exc
    return out


def resolve_device(name: str | None, option: str = "--device") -> str:
    """The torch device to use: ``name`` checked to parse and to exist here, or the default
    (``cuda`` when available, else ``cpu``). Checked before a model is loaded, because torch's
    own errors for a bad device surface deep inside ``Module.to``."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    from msae_plugin.errors import DeviceUnavailableError

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise DeviceUnavailableError(
            f"{option} {name!r} is not a torch device name ({exc}). Use e.g. cpu, cuda or "
            "cuda:0."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"{option} {name!r}: CUDA is not available on this machine (no GPU or driver). "
                "Use --device cpu."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"{option} {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(
            f"{option} {name!r}: MPS is not available on this machine. Use --device cpu."
        )
    return name


def check_output_entries(folder: Path, files: tuple[str, ...] = (), folders: tuple[str, ...] = (),
                         option: str = "--out") -> None:
    """Refuse, before the work starts, an output ``folder`` in which a file the command will
    write is a folder (or a sub-folder it will write into is a file): the write would fail only
    at the end, after the compute."""
    for name in files:
        target = folder / name
        if target.exists() and not target.is_file():
            raise OutputPathError(
                f"{option} {folder}: {target} is a folder, but the command writes a file there. "
                "Move it away or pass another --out."
            )
    for name in folders:
        target = folder / name
        if target.exists() and not target.is_dir():
            raise OutputPathError(
                f"{option} {folder}: {target} is a file, but the command writes a folder there. "
                "Move it away or pass another --out."
            )
