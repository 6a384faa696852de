"""``load_from_disk`` with checks first, shared by the inference and training classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msae_plugin.errors import CheckpointError
from msae_plugin.msae.checkpoint import check_checkpoint_dir


def checked_load(cls: Any, super_load: Any, path: str | Path, **kwargs: Any) -> Any:
    cfg = check_checkpoint_dir(path)
    arch = cfg.get("architecture")
    from sae_lens.registry import SAE_CLASS_REGISTRY

    if arch not in SAE_CLASS_REGISTRY:
        from msae_plugin.registry_errors import unknown_architecture

        raise unknown_architecture(arch)
    config_cls = SAE_CLASS_REGISTRY[arch][1]
    if hasattr(config_cls, "from_dict"):
        from msae_plugin.msae.config import check_required

        check_required(config_cls, cfg)
    try:
        return super_load(path, **kwargs)
    except CheckpointError:
        raise
    except RuntimeError as exc:  # state-dict mismatch: wrong shapes or missing tensors
        raise CheckpointError(
            f"weights in {path} do not match its cfg.json ({exc}). The checkpoint was edited or "
            "mixed from two runs; re-save it from the trained SAE."
        ) from exc
