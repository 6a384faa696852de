"""Saving and loading the addition task's probed model, with the checks a decoder relies on.

``config.json`` records the task, the architecture, its ``config_hash`` and the sha256 of the
weights file, so that a decoder can verify which probed model it was trained against; loading
refuses a file whose hash, task, format version or shapes do not match. Split from
:mod:`msae_plugin.inversionview.addition` (the task itself), which still exposes these names.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer

from msae_plugin.atomic_io import atomic_write, atomic_write_text
from msae_plugin.errors import CheckpointError
from msae_plugin.inversionview.addition import (
    FORMAT_VERSION,
    TASK_NAME,
    VOCAB,
    config_dict,
    config_hash,
    probed_model_config,
)


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    return p / "model.safetensors", p / "config.json"


def save_probed_model(
    model: HookedTransformer, path: str | os.PathLike, extra: dict | None = None
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into the folder ``path`` (atomically).

    ``config.json`` records the task name, the architecture, ``config_hash`` and the sha256 of
    the weights file so that a decoder can verify which probed model it was trained against.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    weights_path, config_path = _paths(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights_path, lambda tmp: save_file(state, str(tmp), metadata={"task": TASK_NAME}))
    weights_sha = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    cfg_d = config_dict(model.cfg)
    meta = {
        "task": TASK_NAME,
        "format_version": FORMAT_VERSION,
        "vocab": list(VOCAB),
        "config": cfg_d,
        "config_hash": config_hash(cfg_d),
        "weights_sha256": weights_sha,
        "extra": extra or {},
    }
    atomic_write_text(config_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def read_probed_model_meta(path: str | os.PathLike) -> dict:
    """The validated ``config.json`` of a saved probed model (raises :class:`CheckpointError`)."""
    _, config_path = _paths(path)
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} is missing: {path} is not a saved addition model")
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("task") != TASK_NAME:
        got = meta.get("task") if isinstance(meta, dict) else None
        raise CheckpointError(f"{config_path} is for task {got!r}, expected {TASK_NAME!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path} has format_version {meta.get('format_version')!r}; this code reads "
            f"version {FORMAT_VERSION}"
        )
    if meta.get("vocab") != list(VOCAB):
        raise CheckpointError(f"{config_path} was saved with a different vocabulary")
    cfg_d = meta.get("config")
    if not isinstance(cfg_d, dict) or config_hash(cfg_d) != meta.get("config_hash"):
        raise CheckpointError(
            f"{config_path}: config_hash does not match the recorded config (edited or corrupt)"
        )
    return meta


def load_probed_model(
    path: str | os.PathLike, expected_config_hash: str | None = None, device: str = "cpu"
) -> HookedTransformer:
    """Load a model saved by :func:`save_probed_model`, verifying hashes and shapes.

    ``expected_config_hash`` (e.g. recorded by a decoder) must match when given.
    """
    meta = read_probed_model_meta(path)
    if expected_config_hash is not None and meta["config_hash"] != expected_config_hash:
        raise CheckpointError(
            f"{path} holds a probed model with config_hash {meta['config_hash'][:12]}..., "
            f"expected {expected_config_hash[:12]}..."
        )
    weights_path, _ = _paths(path)
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} is missing")
    data = weights_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("weights_sha256"):
        raise CheckpointError(
            f"{weights_path} does not match the weights_sha256 in config.json (corrupt, "
            "truncated or from another save)"
        )
    c = meta["config"]
    cfg = probed_model_config(
        n_layers=c["n_layers"],
        d_model=c["d_model"],
        n_heads=c["n_heads"],
        d_mlp=c["d_mlp"],
        device=device,
    )
    if config_hash(cfg) != meta["config_hash"]:
        raise CheckpointError(
            f"{path}: its config cannot be rebuilt by probed_model_config (incompatible fields)"
        )
    try:
        state = load_file(str(weights_path), device=device)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights_path} cannot be read as safetensors ({e})") from e
    model = HookedTransformer(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights_path} does not fit the recorded config: {e}") from e
    model.eval()
    return model
