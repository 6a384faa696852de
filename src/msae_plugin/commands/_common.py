"""Argument types and output-folder checks shared by the sub-commands.

Numeric arguments are checked by argparse itself (``type=positive_int``), so a bad value gives
the usual usage line and exit status 2 before any model is loaded. Output folders are created
and test-written before the work starts, so a typo in ``--out`` costs a second, not a
four-minute run that fails when it saves.
"""

from __future__ import annotations

import argparse
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
    """Create the output folder of a command and prove it is writable, before any work
    (:func:`msae_plugin.preflight.ensure_writable_dir`); returns it as a ``Path``."""
    from msae_plugin.preflight import ensure_writable_dir

    return ensure_writable_dir(
        path, f"{option} {path}",
        "Pass a folder you can write to (it is created if missing), or move the file away.",
    )


def resolve_device(name: str | None, option: str = "--device") -> str:
    """The torch device to use: ``name`` checked to parse and to exist here, or the default
    (``cuda`` when available, else ``cpu``). Checked before a model is loaded, because torch's
    own errors for a bad device surface deep inside ``Module.to``."""
    import torch

    from msae_plugin.preflight import check_device

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name, f"{option} {name!r}", f"Use {option} cpu.")
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


def load_sae(spec: str, error: type[Exception] | None = None,
             example: str = "msae-tiny-clip-msae:hook_image_embed"):
    """The SAE a command names: an SAELens folder, or ``RELEASE:SAE_ID`` through
    ``SAE.from_pretrained`` (which also finds the releases plugins register, such as the shipped
    ``msae-tiny-clip-msae``). A missing folder or an unknown release / id raises ``error``
    (default :class:`msae_plugin.errors.CheckpointError`) with the fix."""
    from sae_lens import SAE

    from msae_plugin.errors import CheckpointError
    from msae_plugin.msae.checkpoint_check import validate_checkpoint

    error = error or CheckpointError
    if Path(spec).exists() or ":" not in spec:
        if not Path(spec).exists():
            raise error(f"SAE {spec}: no such folder. Pass an SAELens SAE folder or "
                        f"RELEASE:SAE_ID, e.g. {example}.")
        validate_checkpoint(spec)  # names the missing/damaged file and the fix
        return SAE.load_from_disk(spec).eval()
    release, sae_id = spec.split(":", 1)
    try:
        return SAE.from_pretrained(release, sae_id).eval()
    except ValueError as exc:  # SAELens's unknown release / sae_id, with the valid ids
        raise error(f"SAE {spec} (RELEASE:SAE_ID): {exc}") from None


def finite_float(text: str) -> float:
    """argparse type: a finite number (a NaN strength would silently blank every result)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value
