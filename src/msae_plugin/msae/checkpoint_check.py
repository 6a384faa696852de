"""Validate an SAELens checkpoint folder file by file, before anything is loaded from it.

SAELens's loaders read ``cfg.json`` and ``sae_weights.safetensors`` straight into library calls,
so a truncated file, a ``cfg.json`` without ``d_sae`` or weights saved for another width fail
with a ``JSONDecodeError``, a safetensors error, a dataclass ``TypeError`` or a
``load_state_dict`` size dump. :func:`validate_checkpoint` looks at every file first and raises
:class:`~msae_plugin.errors.CheckpointError` (or one of its subclasses) naming the file, the
field or the tensor, and what to do. It is what ``MSAE.load_from_disk`` (cheap checks: headers,
shapes) and ``msae check`` (everything, including NaN/inf values) run.

What is checked:

* ``cfg.json``: present, UTF-8 JSON object, a registered ``architecture``, ``d_in``/``d_sae``
  positive integers, a known ``dtype``, and a config the architecture accepts;
* ``sae_weights.safetensors``: readable, exactly the tensors the architecture has, each of the
  shape ``cfg.json`` implies; with ``check_values`` every value finite;
* ``sparsity.safetensors`` if present: readable, one ``sparsity`` tensor of ``[d_sae]``, no NaN
  (``-inf``, the log-density of a latent that never fired, is allowed).

The files only a training run reads (``trainer_state.pt``...) are checked by ``msae check``
(:mod:`msae_plugin.commands.check`), not on every load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME

from msae_plugin.errors import (
    CheckpointArchitectureError,
    CheckpointConfigError,
    CheckpointError,
    MSAEConfigError,
)

_RESAVE = "re-save the SAE with `sae.save_model(path)` or use an earlier checkpoint"


@dataclass
class CheckpointReport:
    """What :func:`validate_checkpoint` found in a folder that passed."""

    path: Path
    cfg: dict[str, Any]
    architecture: str
    tensors: dict[str, tuple[int, ...]]
    files: list[str] = field(default_factory=list)


def _fail(msg: str) -> CheckpointError:
    return CheckpointError(msg)


def read_json_file(path: Path, what: str) -> Any:
    """Parsed JSON of ``path``; a :class:`CheckpointError` naming the file if it is damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(
            f"{path} is not valid JSON ({exc}). The {what} is corrupt or truncated (an "
            "interrupted copy?); restore it or use an earlier checkpoint."
        ) from exc
    except OSError as exc:
        raise _fail(f"{path} cannot be read ({exc.strerror or exc}); check its permissions.") from exc


def _check_folder(path: Path) -> None:
    if not path.exists():
        raise _fail(
            f"checkpoint folder {path} does not exist. Pass the folder that holds "
            f"{SAE_CFG_FILENAME} and {SAE_WEIGHTS_FILENAME} (e.g. the one written by "
            "`sae.save_model(path)`)."
        )
    if not path.is_dir():
        raise _fail(
            f"{path} is a file, not a checkpoint folder. Pass the folder that holds "
            f"{SAE_CFG_FILENAME} and {SAE_WEIGHTS_FILENAME}."
        )
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
        p = path / name
        if p.exists() and not p.is_file():
            raise _fail(f"{p} is a folder, not a file. Move it away and restore {name}.")
        if not p.is_file():
            raise _fail(
                f"{name} is missing from {path}. The checkpoint is incomplete; re-save it or "
                "resume training from an earlier checkpoint."
            )


def _registered_classes(arch: str, training: bool) -> tuple[type, type]:
    """(SAE class, config class) for ``arch``; the training registry when ``training`` (or when
    the architecture exists only there, like SAELens's ``matryoshka_batchtopk``)."""
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    if not training and arch in SAE_CLASS_REGISTRY:
        return SAE_CLASS_REGISTRY[arch]
    if arch in SAE_TRAINING_CLASS_REGISTRY:
        return SAE_TRAINING_CLASS_REGISTRY[arch]
    if arch in SAE_CLASS_REGISTRY:
        return SAE_CLASS_REGISTRY[arch]
    from msae_plugin.registry_errors import unknown_architecture

    raise CheckpointArchitectureError(f"{SAE_CFG_FILENAME}: {unknown_architecture(arch)}")


#: SAELens's annotation of this field omits values its ``__post_init__`` accepts
#: (``constant_norm_rescale``); SAELens checks it itself
_LITERALS_LEFT_TO_SAELENS = {"normalize_activations"}


def _type_ok(value: Any, tp: Any) -> bool | None:
    """Whether a JSON value fits annotation ``tp``; ``None`` when ``tp`` is not a simple type
    this check understands (then the config class decides)."""
    import types
    import typing

    origin = typing.get_origin(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin is list:
        (item,) = typing.get_args(tp) or (None,)
        if not isinstance(value, list):
            return False
        oks = [_type_ok(v, item) for v in value]
        return None if None in oks else all(oks)
    if origin in (typing.Union, types.UnionType):
        oks = [_type_ok(value, arg) for arg in typing.get_args(tp)]
        return True if True in oks else (None if None in oks else False)
    return None


def _describe(tp: Any) -> str:
    import typing

    if typing.get_origin(tp) is typing.Literal:
        return f"one of {list(typing.get_args(tp))}"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_field_types(cfg_cls: type, cfg: dict[str, Any], cfg_path: Path) -> None:
    """Refuse a field of the wrong JSON type (``"k_start": "4"``, ``"apply_b_dec_to_input":
    "yes"``) by name; the config classes would fail later with an unrelated TypeError or, worse,
    accept it and fail inside a forward pass."""
    import dataclasses
    import typing

    try:
        hints = typing.get_type_hints(cfg_cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: leave it to the class
        return
    for f in dataclasses.fields(cfg_cls):
        if f.name not in cfg or f.name not in hints or f.name in _LITERALS_LEFT_TO_SAELENS:
            continue
        if _type_ok(cfg[f.name], hints[f.name]) is False:
            raise CheckpointConfigError(
                f"{cfg_path}: field {f.name!r} must be {_describe(hints[f.name])}, got "
                f"{cfg[f.name]!r} ({type(cfg[f.name]).__name__}). Fix the value or {_RESAVE}."
            )


def _check_cfg(path: Path, cfg: Any, training: bool) -> tuple[str, Any, type]:
    """Field checks, then the architecture's own config; returns (arch, config, SAE class)."""
    cfg_path = path / SAE_CFG_FILENAME
    if not isinstance(cfg, dict):
        raise _fail(f"{cfg_path} holds a JSON {type(cfg).__name__}, not an object; {_RESAVE}.")
    arch = cfg.get("architecture")
    if not isinstance(arch, str):
        raise CheckpointConfigError(
            f"{cfg_path} has no 'architecture' field (or not a string); it was not written by "
            f"SAELens/msae-plugin. Add the architecture name (e.g. \"msae\") or {_RESAVE}."
        )
    sae_cls, cfg_cls = _registered_classes(arch, training)
    missing = [k for k in ("d_in", "d_sae") if k not in cfg]
    if missing:
        raise CheckpointConfigError(
            f"{cfg_path} is missing required field(s) {missing}. The file is incomplete or was "
            f"not written by SAELens/msae-plugin; {_RESAVE}."
        )
    for key in ("d_in", "d_sae"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointConfigError(
                f"{cfg_path}: {key} must be a positive integer, got {value!r}; {_RESAVE}."
            )
    if "dtype" not in cfg:  # SAELens's reader indexes cfg["dtype"] directly
        raise CheckpointConfigError(
            f"{cfg_path} has no 'dtype' field; add \"dtype\": \"float32\" (or the dtype the SAE "
            f"was trained in) or {_RESAVE}."
        )
    from sae_lens.util import str_to_dtype

    try:
        str_to_dtype(cfg["dtype"])
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointConfigError(f"{cfg_path}: {exc}") from exc
    _check_field_types(cfg_cls, cfg, cfg_path)
    try:  # the architecture's own from_dict (MSAEConfig's checks included)
        conf = cfg_cls.from_dict(dict(cfg))
    except MSAEConfigError as exc:
        raise CheckpointConfigError(f"{cfg_path}: {exc}") from exc
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointConfigError(
            f"{cfg_path} is not a valid {arch!r} config ({exc}); fix the field it names or "
            f"{_RESAVE}."
        ) from exc
    return arch, conf, sae_cls


def _expected_shapes(sae_cls: type, conf: Any) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes of a fresh SAE built on the meta device (no memory, no init cost); ``None``
    if the architecture cannot be built that way or renames tensors while loading."""
    from sae_lens.saes.sae import SAE

    if getattr(sae_cls, "process_state_dict_for_loading", None) is not getattr(
        SAE, "process_state_dict_for_loading", None
    ):
        return None
    device = conf.device
    try:
        conf.device = "meta"
        sae = sae_cls(conf)
    except Exception:  # noqa: BLE001 - an architecture that cannot be built on meta: skip
        return None
    finally:
        conf.device = device
    return {k: tuple(v.shape) for k, v in sae.state_dict().items()}


def _check_weights(
    path: Path, cfg: dict[str, Any], expected: dict[str, tuple[int, ...]] | None, values: bool
) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    wpath = path / SAE_WEIGHTS_FILENAME
    try:
        with safe_open(str(wpath), framework="pt") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
            if values:
                for k in shapes:
                    _check_finite(fh.get_tensor(k), k, wpath)
    except CheckpointError:
        raise
    except Exception as exc:
        raise _fail(
            f"{wpath} cannot be read as safetensors ({exc}). The file is corrupt or truncated "
            "(an interrupted copy?); restore it or resume from an earlier checkpoint."
        ) from exc
    if expected is None:
        return shapes
    dims = f"d_in={cfg['d_in']}, d_sae={cfg['d_sae']}"
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected) - {"scaling_factor"})
    if missing or extra:
        raise _fail(
            f"{wpath} does not hold the tensors of a {cfg['architecture']!r} SAE: missing "
            f"{missing}, unexpected {extra}. The weights and {SAE_CFG_FILENAME} come from "
            f"different SAEs; {_RESAVE}."
        )
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise _fail(
                f"tensor {name!r} in {wpath} has shape {list(shapes[name])} but "
                f"{SAE_CFG_FILENAME} ({dims}) implies {list(shape)}. The weights and "
                f"{SAE_CFG_FILENAME} come from different SAEs (edited or mixed files); {_RESAVE}."
            )
    return shapes


def _check_finite(t: Any, name: str, where: Path, allow_neg_inf: bool = False) -> None:
    import torch

    if not t.is_floating_point():
        return
    bad = torch.isnan(t) | (torch.isposinf(t) if allow_neg_inf else torch.isinf(t))
    n_bad = int(bad.sum())
    if n_bad:
        kinds = " and ".join(
            k for k, m in (("NaN", torch.isnan(t)), ("inf", torch.isinf(t))) if bool(m.any())
        )
        raise _fail(
            f"tensor {name!r} in {where} holds {n_bad} non-finite value(s) ({kinds}) out of "
            f"{t.numel()}. Training diverged before this checkpoint was written; resume from an "
            "earlier checkpoint with a lower learning rate."
        )


def _check_sparsity(path: Path, d_sae: int, values: bool) -> None:
    from safetensors import safe_open

    spath = path / SPARSITY_FILENAME
    try:
        with safe_open(str(spath), framework="pt") as fh:
            keys = list(fh.keys())  # noqa: SIM118
            if keys != ["sparsity"]:
                raise _fail(f"{spath} should hold one tensor 'sparsity', found {keys}.")
            shape = list(fh.get_slice("sparsity").get_shape())
            if shape != [d_sae]:
                raise _fail(f"'sparsity' in {spath} has shape {shape}, expected [{d_sae}] (d_sae).")
            if values:  # log10 feature densities: -inf is a latent that never fired
                _check_finite(fh.get_tensor("sparsity"), "sparsity", spath, allow_neg_inf=True)
    except CheckpointError:
        raise
    except Exception as exc:
        raise _fail(
            f"{spath} cannot be read as safetensors ({exc}); it is corrupt or truncated. Delete "
            "it (it only holds feature densities) or restore it."
        ) from exc


def validate_checkpoint(
    path: str | Path, *, check_values: bool = False, training: bool = False
) -> CheckpointReport:
    """Check every file of checkpoint folder ``path``; raise :class:`CheckpointError` on the
    first problem.

    Args:
        check_values: also read every tensor and refuse NaN/inf (``msae check``); loading
            skips it to stay as cheap as before (headers and shapes only).
        training: compare against the architecture's training class (``TrainingSAE`` loads).
    """
    path = Path(path)
    _check_folder(path)
    cfg = read_json_file(path / SAE_CFG_FILENAME, SAE_CFG_FILENAME)
    if isinstance(cfg, dict) and not isinstance(cfg.get("metadata", {}), dict):
        raise CheckpointConfigError(
            f"{path / SAE_CFG_FILENAME}: 'metadata' must be a JSON object, got "
            f"{cfg['metadata']!r}; {_RESAVE}."
        )
    if isinstance(cfg, dict):  # pre-6.0 SAELens names, as SAELens's own loader renames them
        from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting

        cfg = handle_config_defaulting(cfg)
    arch, conf, sae_cls = _check_cfg(path, cfg, training)
    tensors = _check_weights(path, cfg, _expected_shapes(sae_cls, conf), check_values)
    files = [SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME]
    if (path / SPARSITY_FILENAME).is_file():
        _check_sparsity(path, cfg["d_sae"], check_values)
        files.append(SPARSITY_FILENAME)
    return CheckpointReport(path, cfg, arch, tensors, files)
