"""Loading with checks first, for the MSAE classes and for SAELens's base-class loaders.

``MSAE.load_from_disk`` / ``MSAETrainingSAE.load_from_disk`` call :func:`checked_load`: every file
of the folder is validated (:func:`~msae_plugin.msae.checkpoint_check.validate_checkpoint`)
before SAELens reads it, so a bad checkpoint raises a :class:`CheckpointError` naming the file,
field or tensor instead of a ``JSONDecodeError``, a safetensors error or a ``load_state_dict``
dump.

SAELens's ``SAE.load_from_disk`` and ``TrainingSAE.load_from_disk`` are one base classmethod
that looks the class up in the registry only *after* reading the files, so a subclass override
is never reached from them. :func:`install_base_loader_dispatch` (run when the ``msae``
architecture is registered) wraps that base classmethod with a small dispatcher: when
``cfg.json`` names an architecture registered through msae-plugin whose class has its own
``load_from_disk``, the call goes to that class (``SAE.load_from_disk(msae_ckpt)`` is
``MSAE.load_from_disk(msae_ckpt)``, with its checks); a ``cfg.json`` that is not valid JSON
raises :class:`CheckpointError` (a ``ValueError``, like the ``JSONDecodeError`` it replaces) and
an architecture nobody registered raises :class:`CheckpointArchitectureError` (a ``KeyError``,
like SAELens's bare ``KeyError('name')``, with the known names and a suggestion). Every other
call runs SAELens's original code unchanged.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from msae_plugin.errors import CheckpointError
from msae_plugin.msae.checkpoint_check import validate_checkpoint

_MARK = "__msae_dispatch__"


def checked_load(cls: Any, super_load: Any, path: str | Path, **kwargs: Any) -> Any:
    """Validate the folder for ``cls`` (training or inference class), then ``super_load``."""
    from sae_lens.saes.sae import TrainingSAE

    if _default_converter(kwargs.get("converter")):  # a custom converter reads its own layout
        validate_checkpoint(path, training=issubclass(cls, TrainingSAE))
    try:
        return super_load(path, **kwargs)
    except CheckpointError:
        raise
    except RuntimeError as exc:  # anything the header checks cannot see (e.g. a dtype clash)
        raise CheckpointError(
            f"weights in {path} do not match its cfg.json ({exc}). The checkpoint was edited or "
            "mixed from two runs; re-save it from the trained SAE."
        ) from exc


def _default_converter(converter: Any) -> bool:
    from sae_lens.loading.pretrained_sae_loaders import sae_lens_disk_loader

    return converter is None or converter is sae_lens_disk_loader


def _own_loader(cls: type, path: str | Path) -> type | None:
    """The plugin-registered class that should load ``path`` instead of ``cls``, if any."""
    cfg_path = Path(path) / "cfg.json"
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None  # SAELens reports a missing/unreadable file itself (FileNotFoundError...)
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{cfg_path} is not valid JSON ({exc}). The file is corrupt or truncated; restore it "
            "from a backup or re-save the SAE."
        ) from exc
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    from msae_plugin.registration import REGISTRATIONS

    if isinstance(arch, str) and arch not in SAE_CLASS_REGISTRY | SAE_TRAINING_CLASS_REGISTRY:
        from msae_plugin.errors import CheckpointArchitectureError
        from msae_plugin.registry_errors import unknown_architecture

        # SAELens raises a bare KeyError('name'); this one is a KeyError too
        raise CheckpointArchitectureError(f"{cfg_path}: {unknown_architecture(arch)}")
    if not isinstance(arch, str) or ("architecture", arch) not in REGISTRATIONS:
        return None
    try:
        target = cls.get_sae_class_for_architecture(arch)
    except (KeyError, ValueError):
        return None  # SAELens gives its own message (e.g. "not of type X")
    own = getattr(target.load_from_disk, "__func__", None)
    if target is cls or own is None or getattr(own, _MARK, False):
        return None  # same class, or no override of its own: SAELens's code is the loader
    return target


def install_base_loader_dispatch() -> None:
    """Wrap ``sae_lens.SAE.load_from_disk`` (inherited by ``TrainingSAE``) once; idempotent."""
    from sae_lens.saes.sae import SAE

    current = SAE.__dict__["load_from_disk"]
    if getattr(current.__func__, _MARK, False):
        return
    original = current.__func__
    signature = inspect.signature(original)

    def load_from_disk(cls: Any, path: str | Path, *args: Any, **kwargs: Any) -> Any:
        # SAELens's parameters by name (device, dtype, converter, fold_W_dec_norm), so that a
        # positional call reaches an override that takes keywords only
        bound = signature.bind(cls, path, *args, **kwargs).arguments
        options = {k: v for k, v in bound.items() if k not in ("cls", "path")}
        target = _own_loader(cls, path) if _default_converter(options.get("converter")) else None
        if target is not None:
            return target.load_from_disk(path, **options)
        return original(cls, path, *args, **kwargs)

    load_from_disk.__wrapped__ = original  # type: ignore[attr-defined]
    load_from_disk.__doc__ = original.__doc__
    load_from_disk.__name__ = original.__name__
    load_from_disk.__qualname__ = original.__qualname__
    setattr(load_from_disk, _MARK, True)
    SAE.load_from_disk = classmethod(load_from_disk)  # type: ignore[assignment,method-assign]
