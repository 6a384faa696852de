"""Checks a vision training run makes before any work starts: its devices exist, its output
folders can be created (a path under a file used to lose the whole run at the very end) and the
config fits the loaded model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from msae_plugin.errors import DeviceUnavailableError, OutputPathError, SAEModelMismatchError
from msae_plugin.vision.activations import check_image_hook
from msae_plugin.vision.token_selection import TokenSelection
from msae_plugin.vision.training_config import VisionSAERunnerConfig


def check_devices(cfg: VisionSAERunnerConfig) -> None:
    """Refuse a ``device`` / ``model_device`` this machine does not have, before any work."""
    for name in ("device", "model_device"):
        value = getattr(cfg, name)
        if value is None:
            continue
        try:
            dev = torch.device(value)
        except (RuntimeError, TypeError) as exc:
            raise DeviceUnavailableError(
                f"{name}={value!r} is not a torch device ({exc}); use 'cpu', 'cuda', 'cuda:0' "
                "or 'mps'"
            ) from None
        if dev.type == "cuda":
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if n == 0:
                raise DeviceUnavailableError(
                    f"{name}={value!r} but no CUDA GPU is available here (torch "
                    f"{torch.__version__}). Set {name}: cpu (e.g. --override {name}=cpu) or "
                    "install a CUDA build of torch."
                )
            if dev.index is not None and dev.index >= n:
                raise DeviceUnavailableError(
                    f"{name}={value!r} but this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1})"
                    f"; set {name} to one of them"
                )
        elif dev.type == "mps" and not torch.backends.mps.is_available():
            raise DeviceUnavailableError(
                f"{name}={value!r} but MPS is not available here; set {name}: cpu "
                f"(e.g. --override {name}=cpu)"
            )


def prepare_output_paths(cfg: VisionSAERunnerConfig) -> None:
    """Create ``output_path``, ``checkpoint_path`` (and the activation cache folder) now.

    A path that cannot be a folder (a file on the way, no permission) is reported before
    training instead of losing the run at its end.
    """
    paths = {"output_path": cfg.output_path, "checkpoint_path": cfg.checkpoint_path}
    if cfg.use_cached_activations:
        paths["cached_activations_path"] = cfg.cached_activations_path
    for name, value in paths.items():
        if value is None:
            continue
        path = Path(value)
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise OutputPathError(
                f"{name}={value!r} cannot be a folder: {str(blocker)!r} is a file. Choose "
                f"another {name} (e.g. --override {name}=runs/{path.name or 'out'})."
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(
                f"cannot create {name}={value!r} ({exc.strerror or exc}). Choose a folder you "
                f"can write to (e.g. --override {name}=runs/{path.name or 'out'})."
            ) from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputPathError(
                f"{name}={value!r} is not writable. Choose a folder you can write to "
                f"(e.g. --override {name}=runs/{path.name or 'out'})."
            )


def check_config_for_model(cfg: VisionSAERunnerConfig, model: Any) -> int:
    """Raise unless the config fits ``model`` (hook, width, tokens); return the hook width."""
    width = check_image_hook(model, cfg.hook_name)
    if int(cfg.sae.d_in) != width:
        raise SAEModelMismatchError(
            f"sae.d_in={cfg.sae.d_in} does not match the activation width {width} at "
            f"{cfg.hook_name!r} of {cfg.model_name!r} (d_model={model.cfg.d_model}, "
            f"d_mlp={model.cfg.d_mlp}). Set sae.d_in to {width} (e.g. --override "
            f"sae.d_in={width}) and pick d_sae accordingly."
        )
    TokenSelection.parse(cfg.token_selection).validate(
        int(model.cfg.n_ctx), int(model.cfg.n_prefix_tokens)
    )
    return width
