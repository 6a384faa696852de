"""Checks that run before any work starts: output folders and torch devices.

Why a module of its own: the CLI commands (``--out``, ``--html``, ``--device``) and the vision
training runner (``output_path``, ``checkpoint_path``, the activation cache, ``device``) must all
refuse an unusable folder or device *before* minutes of compute, not when the result is saved or
the first tensor moves. One implementation, below both ``commands/`` and ``vision/``, keeps the
rules and the wording the same everywhere; callers pass what to call the value (``what``, e.g.
``"--out runs/x"`` or ``"output_path='runs/x'"``) and the sentence that says how to fix it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from msae_plugin.errors import DeviceUnavailableError, OutputPathError


def ensure_writable_dir(
    path: str | Path, what: str, fix: str, error: type[Exception] = OutputPathError
) -> Path:
    """Create ``path`` (with parents) and prove a file can be written in it.

    Refused, with ``error``: a path that is a file, a path with a file among its parents, and a
    folder that cannot be created or written (permissions, read-only file system)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"{what} is a file, not a folder. {fix}")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise error(f"{what} cannot be created: {blocker} is a file, not a folder. {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".msae-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise error(f"{what} is not writable ({exc.strerror or exc}). {fix}") from None
    return path


def check_device(value: str | torch.device, what: str, fix: str) -> torch.device:
    """``torch.device(value)``, refused with :class:`DeviceUnavailableError` when it does not
    parse or this machine lacks it (no CUDA GPU, a GPU index past the last one, no MPS)."""
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise DeviceUnavailableError(
            f"{what} is not a torch device name ({exc}); use e.g. cpu, cuda or cuda:0. {fix}"
        ) from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise DeviceUnavailableError(
                f"{what} but no CUDA GPU is available here (torch {torch.__version__}). {fix}"
            )
        if device.index is not None and device.index >= n:
            raise DeviceUnavailableError(
                f"{what} but this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1}). {fix}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(f"{what} but MPS is not available here. {fix}")
    return device
