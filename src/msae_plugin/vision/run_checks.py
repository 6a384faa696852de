"""Checks a vision training run makes before any work starts: its devices exist, its output
folders can be created (a path under a file used to lose the whole run at the very end) and the
config fits the loaded model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msae_plugin.errors import SAEModelMismatchError
from msae_plugin.preflight import check_device, ensure_writable_dir
from msae_plugin.vision.activations import check_image_hook
from msae_plugin.vision.token_selection import TokenSelection
from msae_plugin.vision.training_config import VisionSAERunnerConfig


def check_devices(cfg: VisionSAERunnerConfig) -> None:
    """Refuse a ``device`` / ``model_device`` this machine does not have, before any work."""
    for name in ("device", "model_device"):
        value = getattr(cfg, name)
        if value is not None:
            check_device(
                value, f"{name}={value!r}",
                f"Set {name}: cpu (e.g. --override {name}=cpu) or install a CUDA build of torch.",
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
        if value is not None:
            hint = Path(value).name or "out"
            ensure_writable_dir(
                value, f"{name}={str(value)!r}",
                f"Choose another {name} (e.g. --override {name}=runs/{hint}).",
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
