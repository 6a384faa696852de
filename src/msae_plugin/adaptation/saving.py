"""Saving and loading adapted models: a folder with ``adapter.safetensors`` + ``adapter.json``.

Only what adaptation changed is stored: the visual prompts and the CoOp context (prompt
learning), or the tuned image-tower parameters (fine-tuning, fp16), plus the ``[C, D]`` class
embeddings; loading rebuilds the base model by name and applies them, returning a
``ZeroShotModel``. The shipped models live in ``msae_plugin/adaptation/data/<name>/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from msae_plugin.errors import CheckpointError
from msae_plugin.zero_shot_model import ZeroShotModel

FORMAT = "msae-adapted-clip"
VERSION = 1
DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED_MODELS: tuple[str, ...] = ("prompt-learning", "finetune")


def save_adapted_model(zsm: ZeroShotModel, folder: str | Path, extra: dict | None = None,
                       fp16: bool = True) -> Path:
    """Write ``zsm`` (made by ``train_prompts`` or ``finetune_image_tower``) to ``folder``.
    ``fp16`` stores fine-tuned weights in half precision (prompts and embeddings stay fp32)."""
    from safetensors.torch import save_file

    method = zsm.info.get("method")
    if method not in ("prompt_learning", "finetune"):
        raise ValueError(
            f"zsm.info['method'] must be 'prompt_learning' or 'finetune' (a model made by this "
            f"package), got {method!r}"
        )
    model = zsm.model
    tensors: dict[str, torch.Tensor] = {"class_embeddings": zsm.class_embeddings.float()}
    if method == "prompt_learning":
        if model.visual_prompts is not None:
            tensors["visual_prompts"] = model.visual_prompts.prompts.detach().float()
        if "_text_ctx" in zsm.info:
            tensors["text_ctx"] = zsm.info["_text_ctx"].float()
    else:
        state = model.clip.state_dict()
        dtype = torch.float16 if fp16 else torch.float32
        for name in zsm.info["finetune"]["parameters"]:
            tensors[f"clip.{name}"] = state[name].detach().to(dtype)
    meta = {
        "format": FORMAT, "version": VERSION, "name": zsm.name,
        "base_model": model.model_name, "base_pretrained": model.pretrained,
        "class_names": list(zsm.class_names), "logit_scale": float(zsm.logit_scale),
        **{k: v for k, v in zsm.info.items() if not k.startswith("_")},
        **(extra or {}),
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()},
              str(folder / "adapter.safetensors"))
    (folder / "adapter.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return folder


def _resolve(name_or_folder: str | Path) -> Path:
    if str(name_or_folder) in SHIPPED_MODELS:
        return DATA_DIR / str(name_or_folder)
    folder = Path(name_or_folder)
    if not (folder / "adapter.json").is_file() or not (folder / "adapter.safetensors").is_file():
        raise CheckpointError(
            f"{str(name_or_folder)!r} is neither a shipped adapted model {list(SHIPPED_MODELS)} "
            "nor a folder with adapter.json and adapter.safetensors"
        )
    return folder


def load_adapted_model(name_or_folder: str | Path, device: str | torch.device = "cpu"
                       ) -> ZeroShotModel:
    """Load a shipped adapted model (``"prompt-learning"`` or ``"finetune"``) or a folder written
    by :func:`save_adapted_model` as a ``ZeroShotModel`` (fp32, eval mode, frozen)."""
    from safetensors.torch import load_file

    from msae_plugin.adaptation.visual_prompts import VisualPrompts
    from msae_plugin.vision import HookedOpenCLIP

    folder = _resolve(name_or_folder)
    meta: dict[str, Any] = json.loads((folder / "adapter.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{folder}/adapter.json is not a {FORMAT} v{VERSION} file")
    tensors = load_file(str(folder / "adapter.safetensors"))
    model = HookedOpenCLIP.from_pretrained(meta["base_model"], pretrained=meta["base_pretrained"])
    if meta["method"] == "prompt_learning":
        if "visual_prompts" in tensors:
            model.set_visual_prompts(VisualPrompts.from_tensor(tensors["visual_prompts"].float()))
    elif meta["method"] == "finetune":
        state = {k[len("clip."):]: v.float() for k, v in tensors.items() if k.startswith("clip.")}
        own = model.clip.state_dict()
        bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise CheckpointError(f"{folder}: tuned tensors do not fit {meta['base_model']}: {bad}")
        model.clip.load_state_dict(state, strict=False)
    else:
        raise CheckpointError(f"{folder}: unknown adaptation method {meta['method']!r}")
    model = model.to(device).eval().requires_grad_(False)
    info = {k: v for k, v in meta.items() if k not in ("class_names", "logit_scale", "name")}
    if "text_ctx" in tensors:
        info["_text_ctx"] = tensors["text_ctx"]
    return ZeroShotModel(model, tensors["class_embeddings"].float().to(device),
                         list(meta["class_names"]), float(meta["logit_scale"]), meta["name"], info)


def load_base_model(device: str | torch.device = "cpu") -> ZeroShotModel:
    """The un-adapted ``msae-tiny-clip`` with its template-averaged zero-shot head (10 digits)."""
    from msae_plugin.embedded.dataset import CLASS_NAMES
    from msae_plugin.vision import HookedOpenCLIP

    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip", device=device)
    return ZeroShotModel.from_templates(model, CLASS_NAMES, name="base")
