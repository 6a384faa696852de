"""Reading vision training configs: JSON / YAML files, ``key=value`` overrides and the nested
``sae`` section (its config class comes from SAELens's training registry).

Kept apart from :mod:`msae_plugin.vision.training_config` (the dataclass) so that everything a
user can get wrong in a config *file* is checked in one place, before any model is loaded.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, Union

from sae_lens.saes.sae import TrainingSAEConfig

from msae_plugin.names import suggest


class VisionConfigError(ValueError):
    """An invalid vision training config (unknown field, bad value, missing sae fields)."""


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
    sae_dict = {**sae_dict, **check_field_types(cfg_class, sae_dict, "sae.")}
    try:
        return cfg_class.from_dict(sae_dict)
    except (TypeError, ValueError) as exc:  # MSAEConfigError (ladder, weighting...) included
        raise VisionConfigError(f"bad sae config for {arch!r}: {exc}") from None


# ---------------------------------------------------------------------------- field types
def _describe(value: Any) -> str:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return f"the string {value!r}"
        return f"the string {value!r} (a number in quotes: write it without the quotes)"
    return f"{value!r} ({type(value).__name__})"


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """``value`` checked against the annotation ``tp`` (integral floats become ints).

    Raises ``_Mismatch(expected)``. Annotations it does not know (classes, torch types) pass.
    """
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        expected = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                expected.append("null")
                continue
            try:
                return _coerce(value, arg, name)
            except _Mismatch as exc:
                expected.append(exc.expected)
        raise _Mismatch(" or ".join(expected))
    if origin is Literal:
        options = typing.get_args(tp)
        if value not in options:
            raise _Mismatch("one of " + ", ".join(repr(o) for o in options))
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _Mismatch("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch("a whole number")
        if isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer()):
                raise _Mismatch("a whole number")
            return int(value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Mismatch("a number")
        if not math.isfinite(value):
            raise _Mismatch("a finite number")
        return float(value)
    if tp is str:
        if isinstance(value, (bool, int, float, list, dict)):
            raise _Mismatch("a string")
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch("an object (mapping)")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch("a list")
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(args) == 1:
            return type(value)(_coerce(v, args[0], name) for v in value)
        return value
    return value


class _Mismatch(Exception):
    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def check_field_types(cls: type, values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Check ``values`` against the field annotations of the dataclass ``cls``.

    Returns the values to use (integral floats such as ``2e6`` from JSON become ints); raises
    :class:`VisionConfigError` naming the field, what it needs and what it got. Strings are never
    turned into numbers: ``"96"`` in a config is almost always a mistake worth a word.
    """
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check against
        return dict(values)
    out = dict(values)
    for key, value in values.items():
        if key not in hints:
            continue
        try:
            out[key] = _coerce(value, hints[key], key)
        except _Mismatch as exc:
            raise VisionConfigError(
                f"{prefix}{key} must be {exc.expected}, got {_describe(value)}. Fix it in the "
                f"config file or with --override {prefix}{key}=<value>."
            ) from None
    return out


def _yaml_loader() -> Any:
    """PyYAML's safe loader, reading ``3e-4`` as a number (YAML 1.2) rather than a string."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def load_config_dict(path: str | Path) -> dict[str, Any]:
    """Read a JSON / YAML config file into a dict."""
    path = Path(path)
    if path.is_dir():
        raise VisionConfigError(
            f"config file {path} is a folder; pass the JSON/YAML file inside it "
            "(e.g. configs/vision_msae_tiny.json)"
        )
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
        try:
            data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            hint = (
                " YAML does not allow tab characters for indentation: indent with spaces."
                if "\t" in text
                else ""
            )
            raise VisionConfigError(
                f"{path} is not valid YAML: {' '.join(str(exc).split())}.{hint}"
            ) from None
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

