"""``msae check PATH``: validate a checkpoint folder file by file, load it, and say what it holds.

The checks are :func:`msae_plugin.msae.checkpoint_check.validate_checkpoint` with
``check_values=True`` (``cfg.json``, every tensor's name, shape and values, ``sparsity``), the
files of a training checkpoint when there are any (:func:`check_training_files`), then a load
through the architecture's own ``load_from_disk`` (for ``msae``: the plugin's checked load) and
one forward pass on random input, which must give finite output. A problem raises a
:class:`~msae_plugin.errors.CheckpointError`; ``msae`` prints it as ``error: ...`` on stderr and
exits with status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="validate an SAE checkpoint folder (cfg.json + safetensors, training files)",
        description="Validate every file of an SAE checkpoint folder (cfg.json fields, tensor "
        "names, shapes and NaN/inf values, sparsity.safetensors and training-checkpoint files "
        "when present), load it through SAELens and run one forward pass. Exit status 0 if it "
        "is sound, 2 with 'error: ...' on stderr if not.",
    )
    p.add_argument("path", help="folder holding cfg.json and sae_weights.safetensors")
    p.set_defaults(func=run)


def check_training_files(path: str | Path) -> tuple[list[str], dict[str, Any]] | None:
    """Validate the training-only files of a checkpoint folder, if it has any.

    A vision training checkpoint (it has the provider state) goes through the trainer's own
    :func:`~msae_plugin.vision.training_checkpoints.validate_training_checkpoint` (every file
    present and loadable). A plain SAELens ``SAETrainer`` checkpoint needs ``trainer_state.pt``
    (loaded with ``weights_only=True``: a crafted pickle is refused, never run) together with
    ``activation_scaler.json``; ``runner_cfg.json`` and the activation-store state are checked
    when present. Returns (file names, trainer state) or ``None`` for a plain SAE folder.
    """
    from sae_lens.constants import (
        ACTIVATION_SCALER_CFG_FILENAME,
        ACTIVATIONS_STORE_STATE_FILENAME,
        RUNNER_CFG_FILENAME,
        TRAINER_STATE_FILENAME,
    )
    from safetensors import safe_open

    from msae_plugin.errors import CheckpointError
    from msae_plugin.msae.checkpoint_check import read_json_file
    from msae_plugin.vision.activations import PROVIDER_STATE_FILENAME
    from msae_plugin.vision.training_checkpoints import (
        load_trainer_state,
        validate_training_checkpoint,
    )

    path = Path(path)
    names = (TRAINER_STATE_FILENAME, ACTIVATION_SCALER_CFG_FILENAME, RUNNER_CFG_FILENAME,
             PROVIDER_STATE_FILENAME, ACTIVATIONS_STORE_STATE_FILENAME)
    present = [n for n in names if (path / n).is_file()]
    if not present:
        return None
    if PROVIDER_STATE_FILENAME in present:
        validate_training_checkpoint(path)
        return present, load_trainer_state(path)
    pair = {TRAINER_STATE_FILENAME, ACTIVATION_SCALER_CFG_FILENAME}
    if pair & set(present) and not pair <= set(present):
        (lost,) = pair - set(present)
        raise CheckpointError(
            f"training checkpoint {path} is incomplete: {lost} is missing (SAELens writes "
            f"{TRAINER_STATE_FILENAME} and {ACTIVATION_SCALER_CFG_FILENAME} together and reads "
            "both to resume). Resume from an earlier checkpoint."
        )
    for name in (ACTIVATION_SCALER_CFG_FILENAME, RUNNER_CFG_FILENAME):
        if name in present and not isinstance(read_json_file(path / name, name), dict):
            raise CheckpointError(
                f"{path / name} must hold a JSON object; restore it or resume from an earlier "
                "checkpoint."
            )
    if ACTIVATIONS_STORE_STATE_FILENAME in present:
        store = path / ACTIVATIONS_STORE_STATE_FILENAME
        try:
            with safe_open(str(store), framework="pt") as fh:
                list(fh.keys())  # noqa: SIM118
        except Exception as exc:
            raise CheckpointError(
                f"{store} cannot be read as safetensors ({exc}); it is corrupt or truncated. "
                "Resume from an earlier checkpoint."
            ) from exc
    if TRAINER_STATE_FILENAME not in present:
        return present, {}
    return present, load_trainer_state(path)


def _load(arch: str, path: str) -> object:
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    registry = SAE_CLASS_REGISTRY if arch in SAE_CLASS_REGISTRY else SAE_TRAINING_CLASS_REGISTRY
    return registry[arch][0].load_from_disk(path)


def _smoke_forward(sae: object, path: str) -> None:
    import torch

    from msae_plugin.errors import CheckpointError

    d_in = sae.cfg.d_in  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, d_in, generator=g).to(device=sae.device, dtype=sae.dtype)  # type: ignore[attr-defined]
    try:
        with torch.no_grad():
            out = sae(x)  # type: ignore[operator]
    except Exception as exc:  # noqa: BLE001 - whatever breaks, the checkpoint is unusable
        raise CheckpointError(
            f"the SAE in {path} loads, but its forward pass on random input fails "
            f"({type(exc).__name__}: {exc}). A cfg.json field probably holds a value the "
            "architecture cannot use; re-save it from the trained SAE."
        ) from exc
    if not torch.isfinite(out).all():
        raise CheckpointError(
            f"the SAE in {path} loads, but its forward pass gives NaN/inf on random input "
            "although every stored tensor is finite (e.g. a zero input scale). Re-save it from "
            "a healthy training run."
        )


def run(args: argparse.Namespace) -> int:
    import msae_plugin
    from msae_plugin.msae.checkpoint_check import validate_checkpoint

    msae_plugin.register()
    report = validate_checkpoint(args.path, check_values=True)
    training = check_training_files(args.path)
    sae = _load(report.architecture, args.path)
    _smoke_forward(sae, args.path)

    cfg = sae.cfg  # type: ignore[attr-defined]
    print(f"{args.path}: ok")
    print(f"architecture: {report.architecture}  d_in={cfg.d_in}  d_sae={cfg.d_sae}  "
          f"dtype={cfg.dtype}")
    ladder = getattr(cfg, "ladder", None)
    if ladder:
        print(f"k ladder: {list(ladder)}  default_k: {cfg.default_k}")
    hook = cfg.metadata.hook_name
    if hook:
        print(f"hook: {hook}  model: {cfg.metadata.model_name}")
    n_values = sum(_numel(s) for s in report.tensors.values())
    files = report.files + (training[0] if training else [])
    print(f"checked: {', '.join(files)} ({len(report.tensors)} tensors, {n_values:,} "
          "values, all finite)")
    if training and training[1]:
        st = training[1]
        print(f"training checkpoint: step {st['n_training_steps']}, "
              f"{st['n_training_samples']:,} samples seen")
    return 0


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
