"""Saving and loading InversionView decoders: ``decoder.safetensors`` + ``decoder_cfg.json``.

The JSON records the decoder's shape, the hooks (sites) in order, and the probed model's
identity: a fingerprint of its weights. A decoder only reads activations of the exact model it
was trained against, so loading it next to a different probed model is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from msae_plugin.atomic_io import atomic_write, atomic_write_text
from msae_plugin.inversionview.decoder import DecoderConfig, InversionViewDecoder

WEIGHTS = "decoder.safetensors"
CONFIG = "decoder_cfg.json"
FORMAT_VERSION = 1


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes and bytes (fp32): the probed model's identity."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if not torch.is_floating_point(p):
            continue
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_decoder(
    decoder: InversionViewDecoder,
    path: str | Path,
    hooks: list[str],
    probed: torch.nn.Module,
    probed_name: str = "",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the decoder atomically (weights first, config last)."""
    if len(hooks) != decoder.cfg.n_sites:
        raise ValueError(f"{len(hooks)} hooks for a decoder with n_sites={decoder.cfg.n_sites}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}
    atomic_write(path / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    meta = {
        "format_version": FORMAT_VERSION,
        "architecture": "inversionview",
        "decoder": decoder.cfg.to_dict(),
        "hooks": list(hooks),
        "probed_model": {"name": probed_name, "fingerprint": model_fingerprint(probed)},
        **(extra or {}),
    }
    atomic_write_text(path / CONFIG, json.dumps(meta, indent=2))
    return path


def decoder_spec(name: str):
    """The registered decoder architecture ``name`` (plugins are activated first), with the
    nearest registered names in the error when it is unknown."""
    import difflib

    from msae_plugin.registration import DECODERS, activate

    activate()
    if name not in DECODERS:
        near = difflib.get_close_matches(name, list(DECODERS), n=3)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(
            f"unknown decoder architecture {name!r}.{hint} Registered: {sorted(DECODERS)}; "
            "install the plugin that provides it."
        )
    return DECODERS[name]


def load_decoder(
    path: str | Path, probed: torch.nn.Module | None = None
) -> tuple[InversionViewDecoder, dict[str, Any]]:
    """Load a decoder; its class is looked up by the ``architecture`` registry name recorded
    in the config (so third-party decoder plugins load the same way). With ``probed`` given,
    refuse a decoder trained against another model."""
    path = Path(path)
    cfg_path, w_path = path / CONFIG, path / WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a decoder checkpoint: it needs {CONFIG} and {WEIGHTS}"
        )
    try:
        meta = json.loads(cfg_path.read_text())
        arch = meta.get("architecture", "inversionview")
    except Exception as exc:
        raise ValueError(f"corrupt decoder config {cfg_path}: {exc}") from exc
    spec = decoder_spec(arch)
    try:
        config_class = spec.config_class or DecoderConfig
        decoder = spec.decoder_class(config_class(**meta["decoder"]))
        decoder.load_state_dict(load_file(str(w_path)))
    except Exception as exc:
        raise ValueError(f"corrupt or incompatible decoder checkpoint at {path}: {exc}") from exc
    if probed is not None:
        want = meta["probed_model"]["fingerprint"]
        if model_fingerprint(probed) != want:
            raise ValueError(
                f"this decoder was trained against a different probed model "
                f"({meta['probed_model'].get('name') or 'unnamed'}, fingerprint {want[:12]}…); "
                "its samples would not describe this model's activations. Train a decoder for "
                "this model or load the model it was trained on."
            )
    return decoder.eval(), meta


