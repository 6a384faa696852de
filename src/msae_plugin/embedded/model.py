"""The embedded default CLIP model, "msae-tiny-clip": a small ``open_clip.model.CLIP``.

The weights ship as package data (``msae_tiny_clip.safetensors``, fp16) and are produced by
``scripts/train_embedded_clip.py`` on the digit scenes of :mod:`msae_plugin.embedded.dataset`.
``load_embedded_clip()`` returns a regular open_clip ``CLIP`` in eval mode (fp32 by default)
and the matching :class:`~msae_plugin.embedded.tokenizer.WordTokenizer`. Images must be
``IMAGE_SIZE``x``IMAGE_SIZE`` RGB in [0, 1], normalised with ``dataset.normalize`` (the mean/std
are also attached to ``model.visual.preprocess_cfg`` the way ``open_clip.create_model`` does).
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from msae_plugin.embedded.dataset import IMAGE_MEAN, IMAGE_SIZE, IMAGE_STD
from msae_plugin.embedded.tokenizer import DEFAULT_CONTEXT_LENGTH, WordTokenizer

EMBEDDED_MODEL_NAME = "msae-tiny-clip"
WEIGHTS_FILENAME = "msae_tiny_clip.safetensors"
TRAINING_SCRIPT = "scripts/train_embedded_clip.py"

_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "patch_size": 4,
        "width": 96,
        "layers": 4,
        "head_width": 32,
        "mlp_ratio": 4.0,
    },
    "text_cfg": {
        "context_length": DEFAULT_CONTEXT_LENGTH,
        "vocab_size": WordTokenizer().vocab_size,
        "width": 96,
        "heads": 4,
        "layers": 2,
        "mlp_ratio": 4.0,
    },
}


def embedded_model_config() -> dict[str, Any]:
    """The open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``); a copy."""
    return copy.deepcopy(_CONFIG)


def embedded_preprocess_cfg() -> dict[str, Any]:
    """open_clip-style preprocessing config (what ``open_clip.create_model`` attaches)."""
    return {
        "size": IMAGE_SIZE,
        "mode": "RGB",
        "mean": tuple(IMAGE_MEAN),
        "std": tuple(IMAGE_STD),
        "interpolation": "bilinear",
        "resize_mode": "shortest",
        "fill_color": 0,
    }


def build_embedded_clip(config: dict[str, Any] | None = None) -> torch.nn.Module:
    """A randomly initialised ``open_clip.model.CLIP`` with the embedded architecture."""
    from open_clip.model import CLIP, set_model_preprocess_cfg

    model = CLIP(**(copy.deepcopy(config) if config is not None else embedded_model_config()))
    set_model_preprocess_cfg(model, embedded_preprocess_cfg())
    return model


def default_weights_path() -> Path:
    """Where the shipped weights live (package data of ``msae_plugin.embedded``)."""
    return Path(str(resources.files("msae_plugin.embedded") / WEIGHTS_FILENAME))


def _missing(path: Path, why: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{EMBEDDED_MODEL_NAME} weights {why}: {path}. Recreate them with "
        f"`python {TRAINING_SCRIPT}` (15-20 minutes on 2 CPU cores)."
    )


def load_embedded_clip(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    weights_path: str | Path | None = None,
) -> tuple[torch.nn.Module, WordTokenizer]:
    """Load the shipped msae-tiny-clip weights: ``(open_clip CLIP in eval mode, tokenizer)``.

    Raises ``FileNotFoundError`` (naming the training script) when the weights file is missing,
    unreadable or does not match the architecture.
    """
    from safetensors import safe_open

    path = Path(weights_path) if weights_path is not None else default_weights_path()
    if not path.is_file():
        raise _missing(path, "not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    except Exception as e:  # safetensors raises several error types on a corrupt file
        raise _missing(path, f"are corrupt or unreadable ({type(e).__name__}: {e})") from e

    config = embedded_model_config()
    if "config" in metadata:
        try:
            config = json.loads(metadata["config"])
        except json.JSONDecodeError as e:
            raise _missing(path, "carry an unreadable config") from e
    model = build_embedded_clip(config)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise _missing(path, f"do not match the architecture ({e})") from e
    model = model.to(device=device, dtype=dtype).eval()
    tokenizer = WordTokenizer(context_length=config["text_cfg"]["context_length"])
    if tokenizer.vocab_size != config["text_cfg"]["vocab_size"]:
        raise _missing(path, "were trained with a different vocabulary")
    return model, tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
