"""Atomic saving and careful loading of MSAE checkpoints (SAELens layout).

SAELens writes ``cfg.json`` and ``sae_weights.safetensors`` in place; an interrupted write leaves a
truncated file that later fails with an opaque safetensors error. We write each file to a
temporary sibling and ``os.replace`` it (atomic on POSIX), and when loading we translate
low-level failures into :class:`CheckpointError` messages that say what to do.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from safetensors.torch import save_file


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then atomically move the temp file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(
    state_dict: dict[str, torch.Tensor], cfg_dict: dict[str, Any], path: str | Path
) -> tuple[Path, Path]:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights_path = path / SAE_WEIGHTS_FILENAME
    cfg_path = path / SAE_CFG_FILENAME
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    atomic_write_bytes(weights_path, lambda p: save_file(tensors, str(p)))

    def _write_cfg(p: Path) -> None:
        with open(p, "w") as fh:
            json.dump(cfg_dict, fh)

    atomic_write_bytes(cfg_path, _write_cfg)
    return weights_path, cfg_path


def check_checkpoint_dir(path: str | Path, *, check_values: bool = False) -> dict[str, Any]:
    """Validate a checkpoint folder before SAELens touches it; returns the parsed cfg.json.

    Kept for callers of earlier releases; the checks live in
    :func:`msae_plugin.msae.checkpoint_check.validate_checkpoint` (see there for the list).
    """
    from msae_plugin.msae.checkpoint_check import validate_checkpoint

    return validate_checkpoint(path, check_values=check_values).cfg
