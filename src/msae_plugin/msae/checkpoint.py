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

from msae_plugin.errors import CheckpointError


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


def check_checkpoint_dir(path: str | Path) -> dict[str, Any]:
    """Validate a checkpoint folder before SAELens touches it; returns the parsed cfg.json."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is not a checkpoint folder. Pass the folder that holds {SAE_CFG_FILENAME} "
            f"and {SAE_WEIGHTS_FILENAME} (e.g. the one written by `sae.save_model(path)`)."
        )
    cfg_path = path / SAE_CFG_FILENAME
    weights_path = path / SAE_WEIGHTS_FILENAME
    for p in (cfg_path, weights_path):
        if not p.exists():
            raise CheckpointError(
                f"{p.name} is missing from {path}. The checkpoint is incomplete; re-save it or "
                "resume training from an earlier checkpoint."
            )
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{cfg_path} is not valid JSON ({exc}). The file is corrupt or truncated; restore it "
            "from a backup or re-save the SAE."
        ) from exc
    if not isinstance(cfg, dict) or "architecture" not in cfg:
        raise CheckpointError(
            f"{cfg_path} has no 'architecture' field; it was not written by SAELens/msae-plugin."
        )
    try:
        from safetensors import safe_open

        with safe_open(str(weights_path), framework="pt") as fh:
            for key in fh.keys():
                fh.get_slice(key)
    except Exception as exc:
        raise CheckpointError(
            f"{weights_path} cannot be read as safetensors ({exc}). The file is corrupt or "
            "truncated (an interrupted copy?); restore it or resume from an earlier checkpoint."
        ) from exc
    return cfg
