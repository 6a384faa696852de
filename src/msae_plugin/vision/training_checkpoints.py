"""Crash-safe training checkpoints for vision SAE runs, and finding the one to resume from.

SAELens's ``SAETrainer.save_checkpoint`` writes its files (``sae_weights.safetensors``,
``cfg.json``, ``sparsity.safetensors``, ``trainer_state.pt``, ``activation_scaler.json``) straight
into ``<checkpoint_path>/<name>``, and our ``save_checkpoint_fn`` then adds the provider state and
``runner_cfg.json``. A kill in between leaves a folder that looks like a checkpoint but is not
one. :class:`VisionSAETrainer` instead has *all* of them written into a hidden temporary folder
that is renamed into place only when complete (:func:`msae_plugin.atomic_io.atomic_directory`),
so every visible checkpoint folder is whole.

Resuming: :func:`find_latest_checkpoint` picks the newest complete checkpoint under a folder by
itself (temporary folders of killed writes are ignored), and :func:`validate_training_checkpoint`
checks that every file of a checkpoint is present and loadable (``msae check`` can call it).
Trainer states are loaded with ``torch.load(weights_only=True)``: a crafted pickle is refused
with :class:`~msae_plugin.errors.CheckpointError` instead of being executed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from sae_lens import logger
from sae_lens.constants import (
    ACTIVATION_SCALER_CFG_FILENAME,
    ACTIVATION_WHITENING_FILENAME,
    RUNNER_CFG_FILENAME,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
    TRAINER_STATE_FILENAME,
)
from sae_lens.training.sae_trainer import SAETrainer
from safetensors import SafetensorError
from safetensors.torch import load_file

from msae_plugin.atomic_io import atomic_directory, is_temporary, remove_temporaries
from msae_plugin.errors import CheckpointError
from msae_plugin.safe_load import load_torch_file
from msae_plugin.vision.activations import PROVIDER_STATE_FILENAME

#: every file a complete vision training checkpoint holds
CHECKPOINT_FILES = (
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
    TRAINER_STATE_FILENAME,
    ACTIVATION_SCALER_CFG_FILENAME,
    PROVIDER_STATE_FILENAME,
    RUNNER_CFG_FILENAME,
)
#: keys SAETrainer.load_trainer_state reads from trainer_state.pt
TRAINER_STATE_KEYS = (
    "optimizer",
    "lr_scheduler",
    "n_training_samples",
    "n_training_steps",
    "act_freq_scores",
    "n_forward_passes_since_fired",
    "n_frac_active_samples",
    "started_fine_tuning",
    "coefficient_schedulers",
)
_INCOMPLETE_FIX = (
    "The checkpoint is incomplete or damaged (an older msae-plugin wrote checkpoints in place, so "
    "a killed run could leave one half-written); delete it, or resume with `--resume` alone to "
    "use the newest complete checkpoint."
)


def load_trainer_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """``trainer_state.pt`` of a checkpoint, loaded as tensors and plain data only.

    ``weights_only=True`` makes ``torch.load`` refuse any pickled object that could run code; that
    and every other failure (truncated file, missing keys) becomes a :class:`CheckpointError`.
    """
    file = Path(path) / TRAINER_STATE_FILENAME
    if not file.is_file():
        raise CheckpointError(f"{file} is missing. {_INCOMPLETE_FIX}")
    state = load_torch_file(
        file, "load", "Only resume from checkpoints you wrote yourself with `msae train`: delete "
        "this one, or resume with `--resume` alone to use the newest complete checkpoint",
        map_location=device,
    )
    missing = [k for k in TRAINER_STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{file} lacks {missing}. {_INCOMPLETE_FIX}")
    return state


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file} is not valid JSON ({exc}). {_INCOMPLETE_FIX}") from None


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} cannot be read ({exc}). {_INCOMPLETE_FIX}") from None


def validate_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check that every file of a vision training checkpoint is present and loadable.

    Raises :class:`CheckpointError` naming the first bad file; returns
    ``{"path", "n_training_samples", "n_training_steps", "images_consumed"}``.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is not a checkpoint folder; pass a folder written by `msae train` "
            "(checkpoint_path/<n_tokens>) or the checkpoint_path itself"
        )
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}. {_INCOMPLETE_FIX}")
    cfg = _read_json(path / SAE_CFG_FILENAME)
    if not isinstance(cfg, dict) or "d_sae" not in cfg:
        raise CheckpointError(f"{path / SAE_CFG_FILENAME} is not an SAE config. {_INCOMPLETE_FIX}")
    weights = _load_safetensors(path / SAE_WEIGHTS_FILENAME)
    if not weights:
        raise CheckpointError(f"{path / SAE_WEIGHTS_FILENAME} holds no tensors. {_INCOMPLETE_FIX}")
    _load_safetensors(path / SPARSITY_FILENAME)
    state = load_trainer_state(path)
    scaler = _read_json(path / ACTIVATION_SCALER_CFG_FILENAME)
    if not isinstance(scaler, dict) or "scaling_factor" not in scaler:
        raise CheckpointError(
            f"{path / ACTIVATION_SCALER_CFG_FILENAME} lacks scaling_factor. {_INCOMPLETE_FIX}"
        )
    if scaler.get("has_whitening"):
        whitening = path / ACTIVATION_WHITENING_FILENAME
        if not whitening.is_file():
            raise CheckpointError(f"{whitening} is missing. {_INCOMPLETE_FIX}")
        _load_safetensors(whitening)
    provider = _read_json(path / PROVIDER_STATE_FILENAME)
    if not isinstance(provider, dict) or "images_consumed" not in provider:
        raise CheckpointError(
            f"{path / PROVIDER_STATE_FILENAME} lacks images_consumed. {_INCOMPLETE_FIX}"
        )
    if not isinstance(_read_json(path / RUNNER_CFG_FILENAME), dict):
        raise CheckpointError(f"{path / RUNNER_CFG_FILENAME} is not a config. {_INCOMPLETE_FIX}")
    return {
        "path": path,
        "n_training_samples": int(state["n_training_samples"]),
        "n_training_steps": int(state["n_training_steps"]),
        "images_consumed": int(provider["images_consumed"]),
    }


def is_checkpoint_folder(path: Path) -> bool:
    """Whether ``path`` looks like a (possibly incomplete) training checkpoint folder."""
    return path.is_dir() and not is_temporary(path) and (path / TRAINER_STATE_FILENAME).exists()


def _candidates(root: Path) -> list[Path]:
    """Checkpoint folders in ``root`` or one level below (``checkpoint_path/<run id>/<n>``)."""
    found: list[Path] = []
    for child in root.iterdir():
        if not child.is_dir() or is_temporary(child):
            continue
        if is_checkpoint_folder(child):
            found.append(child)
        else:
            found += [g for g in child.iterdir() if is_checkpoint_folder(g)]
    return found


def _sample_count(path: Path) -> int:
    digits = path.name.removeprefix("final_")
    return int(digits) if digits.isdigit() else -1


def find_latest_checkpoint(root: str | Path) -> Path | None:
    """The newest *complete* checkpoint in ``root`` (or one level below), or ``None``.

    "Newest" is the last written (folder modification time, then the token count in its name);
    incomplete folders (from runs killed under an older msae-plugin) are skipped with a warning
    and temporary folders of killed writes are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    if is_checkpoint_folder(root):
        validate_training_checkpoint(root)
        return root
    ranked = sorted(
        _candidates(root), key=lambda p: (p.stat().st_mtime_ns, _sample_count(p)), reverse=True
    )
    for path in ranked:
        try:
            validate_training_checkpoint(path)
        except CheckpointError as exc:
            logger.warning(f"skipping incomplete checkpoint: {exc}")
            continue
        return path
    return None


def resolve_resume_checkpoint(resume: str | Path, checkpoint_root: str | Path | None) -> Path | None:
    """The checkpoint folder a run resumes from.

    ``resume`` is ``"auto"`` (the newest complete checkpoint under ``checkpoint_root``), a folder
    of checkpoints (the newest complete one in it) or one checkpoint folder (validated). Returns
    ``None`` when there is nothing complete to resume from yet (the run starts afresh).
    """
    if str(resume) == "auto":
        if checkpoint_root is None:
            raise CheckpointError(
                "cannot resume: checkpoint_path is null, so no checkpoints were written. Set "
                "checkpoint_path in the config, or pass the checkpoint folder to --resume."
            )
        return find_latest_checkpoint(checkpoint_root)
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(
            f"cannot resume from {path}: no such folder. Pass a checkpoint folder written by "
            "`msae train` (checkpoint_path/<n_tokens>), the checkpoint_path itself, or "
            "--resume alone for the newest checkpoint under the config's checkpoint_path."
        )
    if is_checkpoint_folder(path):
        validate_training_checkpoint(path)
        return path
    found = find_latest_checkpoint(path)
    if found is None and not _candidates(path):
        raise CheckpointError(
            f"cannot resume from {path}: it holds no training checkpoint (no folder with "
            f"{TRAINER_STATE_FILENAME}). Pass a checkpoint folder or the config's checkpoint_path."
        )
    return found


class VisionSAETrainer(SAETrainer):  # type: ignore[type-arg]
    """SAELens's ``SAETrainer`` with atomic checkpoints and a safe, schedule-aware resume.

    * ``save_checkpoint`` writes the whole folder (SAELens's files and our
      ``save_checkpoint_fn`` files) into a temporary folder renamed into place when complete;
    * ``load_trainer_state`` loads tensors only (``weights_only=True``) and drops the checkpoint
      thresholds the run had already passed: SAELens keeps them all, so a resumed run used to
      write a checkpoint on every step until it caught up with its schedule.
    """

    def save_checkpoint(
        self,
        checkpoint_name: str,
        base_path: Path | str | None = None,
        wandb_aliases: list[str] | None = None,
    ) -> None:
        base = base_path if base_path is not None else self.cfg.checkpoint_path
        if base is None:  # W&B-only upload into a temporary folder: nothing to make atomic
            super().save_checkpoint(checkpoint_name, base_path, wandb_aliases)
            return
        remove_temporaries(base)
        with atomic_directory(Path(base) / checkpoint_name) as tmp:
            super().save_checkpoint(tmp.name, base_path=tmp.parent, wandb_aliases=wandb_aliases)

    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        checkpoint_path = Path(checkpoint_path)
        self.activation_scaler.load(checkpoint_path / ACTIVATION_SCALER_CFG_FILENAME)
        state = load_trainer_state(checkpoint_path, self.cfg.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.n_training_samples = int(state["n_training_samples"])
        self.n_training_steps = int(state["n_training_steps"])
        self.act_freq_scores = state["act_freq_scores"]
        self.n_forward_passes_since_fired = state["n_forward_passes_since_fired"]
        self.n_frac_active_samples = state["n_frac_active_samples"]
        self.started_fine_tuning = state["started_fine_tuning"]
        for name, scheduler_state in state["coefficient_schedulers"].items():
            self.coefficient_schedulers[name].load_state_dict(scheduler_state)
        # SAETrainer checkpoints once n_training_samples > threshold, then pops the threshold
        self.checkpoint_thresholds = [
            t for t in self.checkpoint_thresholds if t >= self.n_training_samples
        ]
