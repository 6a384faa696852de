"""Reading vision training configs: JSON / YAML files, ``key=value`` overrides and the nested
``sae`` section (its config class comes from SAELens's training registry).

Kept apart from :mod:`msae_plugin.vision.training_config` (the dataclass) so that everything a
user can get wrong in a config *file* is checked in one place, before any model is loaded.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from sae_lens.saes.sae import TrainingSAEConfig


class VisionConfigError(ValueError):
    """An invalid vision training config (unknown field, bad value, missing sae fields)."""


def suggest(name: str, known: list[str]) -> str:
    """`` Did you mean 'x'?`` for the closest known name, or ``""``."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def build_sae_config(sae_dict: Any, get_training_class: Any) -> TrainingSAEConfig:
    """A training-SAE config from ``{"architecture": ..., fields...}`` with readable errors."""
    if not isinstance(sae_dict, dict):
        raise VisionConfigError(f'"sae" must be an object, got {type(sae_dict).__name__}')
    if "architecture" not in sae_dict:
        raise VisionConfigError(
            '"sae" needs an "architecture" (e.g. "msae", "standard", "topk", "batchtopk", '
            '"jumprelu")'
        )
    arch = sae_dict["architecture"]
    _, cfg_class = get_training_class(arch)
    allowed = [f.name for f in fields(cfg_class)] + ["architecture", "metadata"]
    for key in sae_dict:
        if key not in allowed:
            raise VisionConfigError(
                f"unknown field {key!r} for sae architecture {arch!r}.{suggest(key, allowed)} "
                f"Fields of {cfg_class.__name__}: "
                + ", ".join(a for a in allowed if a != "metadata")
            )
    missing = [k for k in ("d_in", "d_sae") if k not in sae_dict]
    if missing:
        raise VisionConfigError(
            f"sae is missing {missing}: d_in is the activation width at the hook "
            "(model.activation_width(hook_name), e.g. d_model for hook_resid_post) and d_sae the "
            "number of latents"
        )
    try:
        return cfg_class.from_dict(sae_dict)
    except TypeError as exc:
        raise VisionConfigError(f"bad sae config for {arch!r}: {exc}") from exc


def load_config_dict(path: str | Path) -> dict[str, Any]:
    """Read a JSON / YAML config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise VisionConfigError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise VisionConfigError(
                f"{path} is YAML but PyYAML is not installed: `pip install pyyaml`, or write "
                "the config as JSON"
            ) from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VisionConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise VisionConfigError(f"{path} must hold a JSON/YAML object at the top level")
    return data


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg_dict: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["lr=1e-3", "sae.d_sae=512", "logger.log_to_wandb=false"]`` applied to a copy.

    Values are parsed as JSON when they can be (numbers, booleans, null, lists, objects) and are
    strings otherwise.
    """
    out = json.loads(json.dumps(cfg_dict))
    for item in overrides:
        if "=" not in item:
            raise VisionConfigError(f"override {item!r} must look like key=value (e.g. lr=1e-3)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise VisionConfigError(f"override {item!r}: {part!r} is not a section")
        target[parts[-1]] = _parse_value(value.strip())
    return out

