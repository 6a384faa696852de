"""Checks a vision training run makes before any work starts: its devices exist, its output
folders can be created (a path under a file used to lose the whole run at the very end), the
config fits the loaded model, the global batch splits over the ranks, and a checkpoint to resume
comes from this run (and from as many processes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sae_lens.constants import RUNNER_CFG_FILENAME

from msae_plugin.distributed.checkpoint import check_world_size
from msae_plugin.distributed.context import DistContext
from msae_plugin.errors import DistributedError, SAEModelMismatchError
from msae_plugin.preflight import check_device, ensure_writable_dir
from msae_plugin.vision.activations import check_image_hook
from msae_plugin.vision.config_files import VisionConfigError
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


def check_batch_splits(cfg: VisionSAERunnerConfig, ctx: DistContext) -> None:
    """Refuse a global batch that the ranks cannot share equally (their mean losses would be
    weighted wrongly when the gradients are averaged)."""
    w, batch = ctx.world_size, cfg.train_batch_size_tokens
    if batch % w:
        raise DistributedError(
            f"train_batch_size_tokens={batch} cannot be split evenly over {w} ranks; make it "
            f"a multiple of {w} (e.g. --override train_batch_size_tokens={batch - batch % w})"
        )


def check_resume_checkpoint(cfg: VisionSAERunnerConfig, path: Path, ctx: DistContext) -> None:
    """Refuse a checkpoint of another run (model, hook, tokens, SAE shape, world size)."""
    check_world_size(path, ctx)
    runner_cfg = path / RUNNER_CFG_FILENAME
    if runner_cfg.is_file():
        old = json.loads(runner_cfg.read_text())
        now = cfg.to_dict()
        diffs = [
            f"{k}: checkpoint {old.get(k)!r}, this run {now[k]!r}"
            for k in ("model_name", "hook_name", "token_selection")
            if old.get(k) != now[k]
        ]
        diffs += [
            f"sae.{k}: checkpoint {old['sae'].get(k)!r}, this run {now['sae'][k]!r}"
            for k in ("architecture", "d_in", "d_sae")
            if old.get("sae", {}).get(k) != now["sae"][k]
        ]
        if diffs:
            raise VisionConfigError(
                f"checkpoint {path} comes from a different run: " + "; ".join(diffs)
            )

