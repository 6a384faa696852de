"""SAELens's named-loader protocol, for release folders on local disk.

``SAE.from_pretrained_with_cfg_and_sparsity`` calls the loader named by a release's
``conversion_func`` as ``loader(repo_id=..., folder_name=..., device=..., force_download=...,
cfg_overrides=...)`` and expects ``(cfg_dict, state_dict, log_sparsity | None)``. For a plugin
release ``repo_id`` is the release's root folder and ``folder_name`` the sae_id's folder below
it. The folder is checked first (:func:`~msae_plugin.msae.checkpoint_check.validate_checkpoint`:
headers and shapes, no tensor values), so a damaged file raises a ``CheckpointError`` naming it;
then SAELens's own disk reader does the rest, which keeps ``cfg_dict`` (overrides, dtype) the
same as ``SAE.load_from_disk`` of that folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from msae_plugin.errors import CheckpointError


def release_folder(repo_id: str, folder_name: str) -> Path:
    """The sae_id's folder; a :class:`CheckpointError` when it vanished since registration."""
    path = Path(repo_id) / folder_name
    if not path.is_dir():
        raise CheckpointError(
            f"the folder {path} of this pretrained release no longer exists (it was there when "
            "the plugin registered the release). Reinstall the plugin that provides it, or "
            "restore the folder."
        )
    return path


def local_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,  # noqa: ARG001 - nothing to download
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
    """``(cfg_dict, state_dict, log_sparsity)`` of a release folder, like SAELens's HF loader."""
    from sae_lens.constants import SPARSITY_FILENAME
    from sae_lens.loading.pretrained_sae_loaders import sae_lens_disk_loader
    from safetensors.torch import load_file

    from msae_plugin.msae.checkpoint_check import validate_checkpoint

    path = release_folder(repo_id, folder_name)
    validate_checkpoint(path)
    cfg_dict, state_dict = sae_lens_disk_loader(path, device=device, cfg_overrides=cfg_overrides)
    sparsity_path = path / SPARSITY_FILENAME
    log_sparsity = (
        load_file(str(sparsity_path), device=str(device))["sparsity"]
        if sparsity_path.is_file()
        else None
    )
    return cfg_dict, state_dict, log_sparsity


def local_config_getter(
    repo_id: str,
    folder_name: str,
    device: str | None = None,
    force_download: bool = False,  # noqa: ARG001 - nothing to download
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``cfg_dict`` of a release folder (``sae_lens.load_sae_config_from_huggingface``)."""
    from sae_lens.loading.pretrained_sae_loaders import get_sae_lens_config_from_disk

    from msae_plugin.msae.checkpoint_check import read_json_file

    path = release_folder(repo_id, folder_name)
    read_json_file(path / "cfg.json", "cfg.json")  # a damaged file: CheckpointError naming it
    return get_sae_lens_config_from_disk(path, device, cfg_overrides)
