"""Atomic saving and careful loading of MSAE checkpoints (SAELens layout).

SAELens writes ``cfg.json`` and ``sae_weights.safetensors`` in place; an interrupted write leaves a
truncated file that later fails with an opaque safetensors error. We write each file to a
temporary sibling and ``os.replace`` it (atomic on POSIX), and when loading we translate
low-level failures into :class:`CheckpointError` messages that say what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from safetensors.torch import save_file

from msae_plugin.atomic_io import atomic_write, atomic_write_text


def save_atomic(
    state_dict: dict[str, torch.Tensor], cfg_dict: dict[str, Any], path: str | Path
) -> tuple[Path, Path]:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights_path = path / SAE_WEIGHTS_FILENAME
    cfg_path = path / SAE_CFG_FILENAME
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    atomic_write(weights_path, lambda p: save_file(tensors, str(p)))

    atomic_write_text(cfg_path, json.dumps(cfg_dict))
    return weights_path, cfg_path


def check_checkpoint_dir(path: str | Path, *, check_values: bool = False) -> dict[str, Any]:
    """Validate a checkpoint folder before SAELens touches it; returns the parsed cfg.json.

    Kept for callers of earlier releases; the checks live in
    :func:`msae_plugin.msae.checkpoint_check.validate_checkpoint` (see there for the list).
    """
    from msae_plugin.msae.checkpoint_check import validate_checkpoint

    return validate_checkpoint(path, check_values=check_values).cfg
