"""Loading CLIP models by name: the embedded model, or OpenCLIP's real loading path.

``pretrained`` tags (``"openai"``, ``"laion2b_s34b_b79k"``, ...) go through
``open_clip.create_model``, which downloads from the Hugging Face hub. Offline that fails deep
inside ``huggingface_hub``; we re-raise with what to do instead (a local checkpoint path, or the
embedded model).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from msae_plugin.errors import UnsupportedModelError

EMBEDDED_MODELS = ("msae-tiny-clip",)


class PretrainedUnavailableError(RuntimeError):
    """Pretrained weights that could not be fetched (no network, unknown tag, bad file)."""


def load_open_clip(
    model_name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    **create_kwargs: Any,
) -> tuple[nn.Module, Callable[..., torch.Tensor] | None, str | None]:
    """Return ``(clip_model, tokenizer_or_None, pretrained)`` for a model name."""
    if model_name in EMBEDDED_MODELS:
        if pretrained not in (None, "embedded", model_name):
            raise PretrainedUnavailableError(
                f"{model_name!r} ships its own weights; do not pass pretrained={pretrained!r}"
            )
        from msae_plugin.embedded import load_embedded_clip

        clip, tokenizer = load_embedded_clip(device=device)
        return clip, tokenizer, "embedded"

    import open_clip

    known = set(open_clip.list_models())
    schema = model_name.startswith(("hf-hub:", "local-dir:"))
    if not schema and model_name not in known:
        close = difflib.get_close_matches(model_name, sorted(known) + list(EMBEDDED_MODELS), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnsupportedModelError(
            f"unknown CLIP model name {model_name!r}.{hint} Use an OpenCLIP name "
            "(open_clip.list_models()) or the embedded 'msae-tiny-clip'."
        )
    try:
        clip = open_clip.create_model(
            model_name, pretrained=pretrained, device=device, **create_kwargs
        )
    except Exception as exc:  # network / hub / checkpoint errors all surface here
        if pretrained is None and not schema:
            raise
        raise PretrainedUnavailableError(
            f"could not load pretrained weights for {model_name!r} (pretrained={pretrained!r}): "
            f"{type(exc).__name__}: {exc}. Downloading needs access to the Hugging Face hub. "
            "Offline, download open_clip_pytorch_model.bin elsewhere and pass its file path as "
            "`pretrained`, use 'local-dir:/path/to/folder', or use the embedded 'msae-tiny-clip'."
        ) from exc
    return clip, None, pretrained
