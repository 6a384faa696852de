"""Checkpoints written by the MSAE paper's reference code, loaded as the plugin's ``msae``.

Why: researchers who trained with the reference code (github.com/WolodjaZ/MSAE) hold a
``torch.save`` file in its own layout, not SAELens's folder. That file is a dict holding the
model's ``state_dict`` under ``"model"`` (a bare state dict at the top level is accepted too)
next to the standardisation statistics ``mean_center`` (μ, shape [d]) and ``scaling_factor``
(s, a number); ``target_norm`` is informational and ignored. The state dict holds

* ``pre_bias`` [d], ``encoder`` [d, n] (a plain parameter, *not* an ``nn.Linear``: it is
  multiplied from the right), ``latent_bias`` [n], ``decoder`` [n, d] (absent when trained
  with ``tied=True``: the decoder is then ``encoder.T``), and the buffer
  ``latents_activation_frequency`` (training statistics, ignored).

The reference computes x' = (x − μ)·s, z_pre = (x' − pre_bias) @ encoder + latent_bias,
z = ReLU(z_pre) (or TopK of it at k), x̂' = z @ decoder + pre_bias, x̂ = x̂'/s + μ. The plugin's
``msae`` computes the same with ``input_mean`` = μ, ``input_scale`` = s, ``b_dec`` = pre_bias,
``W_enc`` = encoder, ``b_enc`` = latent_bias, ``W_dec`` = decoder, so every tensor is copied as
it is: no transpose, no rescaling. The ReLU path is then exact for any weights. The plugin's TopK
ranks latents by z_pre_j·‖W_dec_j‖, the reference's by z_pre_j; they agree when the decoder
rows have equal norms, which the reference keeps at 1 (``scale_to_unit_norm`` every step), so
rows further than ``decoder_norm_tol`` from unit norm are refused unless the caller opts out.

Files are read with :func:`msae_plugin.safe_load.load_torch_file` (tensors and plain data only):
the reference saves with ``torch.save``, and a pickle that wants other objects is refused, never
run. Options cover what the layout leaves open: ``tied``, and the key names of the statistics
(``mean_key`` / ``scale_key``; ``None`` when a run did not standardise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from msae_plugin.errors import CheckpointError
from msae_plugin.names import suggest

#: tensors of the reference ``Autoencoder`` / ``MSAE`` state dict, in the plugin's order
REFERENCE_TENSORS = ("pre_bias", "encoder", "latent_bias", "decoder")
#: state-dict entries that carry no part of the forward pass (training statistics)
IGNORED_STATE_KEYS = ("latents_activation_frequency",)
DEFAULT_MEAN_KEY = "mean_center"
DEFAULT_SCALE_KEY = "scaling_factor"
#: the reference keeps decoder rows at unit norm; the last optimiser step moves them slightly
DEFAULT_DECODER_NORM_TOL = 1e-3

_FIX = "Pass the .pt/.pth file the reference code's train.py wrote"


def read_reference_file(path: str | Path) -> dict[str, Any]:
    """The dict inside a reference ``torch.save`` file, read tensors-only."""
    data = _load(path)
    if not isinstance(data, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(data).__name__}, not the dict the reference code saves "
            f"({{'model': state_dict, 'mean_center': ..., 'scaling_factor': ...}}). {_FIX}."
        )
    return dict(data)


def _load(path: str | Path) -> Any:
    from msae_plugin.safe_load import load_torch_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"reference checkpoint {path} {'is a folder' if path.is_dir() else 'does not exist'}"
            f". {_FIX} (a single file, e.g. 6144_768_TopKReLU_64_RW_False_False_0.0_cc3m.pth)."
        )
    return load_torch_file(path, "load the reference checkpoint", _FIX)


def _state_dict(data: dict[str, Any], path: str | Path, stats: set[Any]) -> dict[str, Any]:
    """The model's state dict: nested under ``"model"`` (train.py) or at the top level, where
    the entries named in ``stats`` (the statistics) are not part of it."""
    nested = data.get("model")
    if isinstance(nested, Mapping):
        return dict(nested)
    if "pre_bias" in data or "encoder" in data:
        return {k: v for k, v in data.items() if k not in stats}
    raise CheckpointError(
        f"{path} has no model state dict: expected a dict under 'model' (or the tensors "
        f"{list(REFERENCE_TENSORS)} at the top level), found keys {sorted(map(str, data))}. "
        f"{_FIX}."
    )


def _tensor(value: Any, name: str, path: str | Path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(
            f"{path}: {name!r} must be a tensor, got {type(value).__name__}. {_FIX}."
        )
    if value.is_complex() or not value.is_floating_point():
        raise CheckpointError(f"{path}: {name!r} must be a real float tensor, got {value.dtype}.")
    bad = int((~torch.isfinite(value)).sum())
    if bad:
        raise CheckpointError(
            f"{path}: {name!r} holds {bad} NaN/inf value(s) of {value.numel()}; the training run "
            "diverged or the file is damaged. Convert a checkpoint from a healthy run."
        )
    return value.detach()


def _weights(
    sd: dict[str, Any], path: str | Path, tied: bool
) -> dict[str, torch.Tensor]:
    """Checked reference tensors with ``decoder`` filled in for a tied model."""
    wanted = [k for k in REFERENCE_TENSORS if not (tied and k == "decoder")]
    missing = [k for k in wanted if k not in sd]
    if missing:
        hint = (
            " A model trained with tied=True has no decoder: pass tied=True (--tied)."
            if missing == ["decoder"]
            else ""
        )
        raise CheckpointError(
            f"{path}: the model state dict lacks {missing} (it has {sorted(map(str, sd))}); the "
            f"reference layout holds {list(REFERENCE_TENSORS)}.{hint} {_FIX}."
        )
    if tied and "decoder" in sd:
        raise CheckpointError(
            f"{path}: tied=True, but the state dict holds its own 'decoder'; the model was "
            "trained untied. Leave tied off (drop --tied)."
        )
    unknown = sorted(str(k) for k in sd if k not in REFERENCE_TENSORS + IGNORED_STATE_KEYS)
    if unknown:
        raise CheckpointError(
            f"{path}: unexpected entries {unknown} in the model state dict."
            f"{suggest(unknown[0], REFERENCE_TENSORS)} They belong to another architecture "
            "(e.g. JumpReLU's threshold), which msae cannot represent; convert only "
            "TopK/ReLU/Matryoshka models of the reference code."
        )
    w = {k: _tensor(sd[k], k, path) for k in wanted}
    if tied:
        w["decoder"] = w["encoder"].T
    return w


def _check_shapes(w: dict[str, torch.Tensor], path: str | Path) -> tuple[int, int]:
    """``(d, n)`` from the biases; the matrices must be encoder [d, n] and decoder [n, d]."""
    if w["pre_bias"].dim() != 1 or w["latent_bias"].dim() != 1:
        raise CheckpointError(
            f"{path}: 'pre_bias' and 'latent_bias' must be vectors, got shapes "
            f"{tuple(w['pre_bias'].shape)} and {tuple(w['latent_bias'].shape)}. {_FIX}."
        )
    d, n = w["pre_bias"].numel(), w["latent_bias"].numel()
    for name, expected in (("encoder", (d, n)), ("decoder", (n, d))):
        got = tuple(w[name].shape)
        if got != expected:
            flipped = " (transposed: an nn.Linear layout, not the reference's)" if (
                got == expected[::-1]
            ) else ""
            raise CheckpointError(
                f"{path}: {name!r} has shape {got}, expected {expected} for d={d} inputs "
                f"(pre_bias) and n={n} latents (latent_bias){flipped}. The reference stores "
                "encoder as [d, n] and decoder as [n, d]; the file was edited or comes from "
                "another code base."
            )
    return d, n


def _statistics(
    data: dict[str, Any], path: str | Path, d: int, mean_key: str | None, scale_key: str | None
) -> tuple[torch.Tensor, float]:
    """μ ([d]) and s (> 0) stored next to the state dict; a ``None`` key means none stored."""
    keys = [k for k in (mean_key, scale_key) if k is not None]
    missing = [k for k in keys if k not in data]
    if missing:
        found = sorted(str(k) for k in data if k != "model")
        near = "".join(suggest(k, found) for k in missing)
        if {"dataset_mean", "dataset_target_norm"} <= set(found):  # names load_model() reads
            near += (
                " The file uses the names the reference's load_model() reads: if "
                "'dataset_target_norm' holds the scaling factor s of x' = (x - mu) * s, pass "
                "mean_key='dataset_mean', scale_key='dataset_target_norm' (--mean-key "
                "dataset_mean --scale-key dataset_target_norm)."
            )
        raise CheckpointError(
            f"{path}: the standardisation statistic(s) {missing} are missing (next to 'model' "
            f"the file holds {found}).{near} Name the keys your run used with mean_key= / "
            "scale_key= (--mean-key / --scale-key), or pass None ('none') for a run that did not "
            "mean-centre / scale its inputs."
        )
    mean = torch.zeros(d)
    if mean_key is not None:
        mean = _tensor(data[mean_key], mean_key, path).reshape(-1)
        if mean.numel() != d:
            raise CheckpointError(
                f"{path}: {mean_key!r} has {mean.numel()} values, but the model has d={d} "
                "inputs. It belongs to another run or another modality's data; pass the matching "
                "statistics."
            )
    scale = 1.0
    if scale_key is not None:
        raw = data[scale_key]
        if isinstance(raw, torch.Tensor) and raw.numel() == 1:
            raw = raw.item()
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            what = f"a tensor of shape {tuple(raw.shape)}" if isinstance(
                raw, torch.Tensor) else type(raw).__name__
            raise CheckpointError(
                f"{path}: {scale_key!r} must be one number (s in x' = (x - mu) * s), got {what}. "
                "Pass the key that holds the scaling factor (--scale-key)."
            )
        scale = float(raw)
        if not (math.isfinite(scale) and scale > 0):
            raise CheckpointError(
                f"{path}: {scale_key!r} = {scale!r}; the scaling factor must be finite and > 0. "
                "The statistics were computed on degenerate data; recompute them."
            )
    return mean, scale


def _check_decoder_norms(decoder: torch.Tensor, tol: float | None, path: str | Path) -> None:
    if tol is None:
        return
    norms = decoder.double().norm(dim=-1)
    worst = float((norms - 1).abs().max()) if norms.numel() else 0.0
    if worst > tol:
        raise CheckpointError(
            f"{path}: decoder rows are not unit-norm (largest | ||row|| - 1 | = {worst:.3g} > "
            f"decoder_norm_tol={tol:g}). The reference ranks TopK latents by pre-activation, the "
            "plugin by pre-activation x ||row||; they agree only for unit rows. The ReLU path is "
            "exact anyway: pass decoder_norm_tol=None (--decoder-norm-tol none) to convert it "
            "with the plugin's ranking for TopK."
        )


def load_reference_checkpoint(
    path: str | Path,
    *,
    k_levels: Sequence[int] | None = None,
    hook_name: str | None = None,
    model_name: str | None = None,
    tied: bool = False,
    mean_key: str | None = DEFAULT_MEAN_KEY,
    scale_key: str | None = DEFAULT_SCALE_KEY,
    decoder_norm_tol: float | None = DEFAULT_DECODER_NORM_TOL,
    dtype: str = "float32",
) -> Any:
    """An :class:`~msae_plugin.msae.sae.MSAE` that computes what the reference model computes.

    Args:
        path: the file the reference code saved with ``torch.save``.
        k_levels: the trained k ladder (metadata; any k works at inference). Default: the
            paper's 64, 128, ... doubling up to d_sae (just [d_sae] when d_sae < 64).
        hook_name, model_name: written to ``cfg.metadata`` (where the activations came from).
        tied: the run used ``tied=True`` (no ``decoder`` in the file; it is ``encoder.T``).
        mean_key, scale_key: keys of μ and s in the file; ``None`` when not stored.
        decoder_norm_tol: refuse decoder rows further than this from unit norm; ``None`` skips.

    Raises :class:`CheckpointError` (or its :class:`UnsafeCheckpointError`) naming the problem.
    """
    from sae_lens.saes.sae import SAEMetadata

    from msae_plugin.msae.config import MSAEConfig
    from msae_plugin.msae.sae import MSAE

    data = read_reference_file(path)
    stats = {mean_key, scale_key, "target_norm"}
    w = _weights(_state_dict(data, path, stats), path, tied)
    d, n = _check_shapes(w, path)
    mean, scale = _statistics(data, path, d, mean_key, scale_key)
    _check_decoder_norms(w["decoder"], decoder_norm_tol, path)

    if k_levels is None and n < 64:
        k_levels = [n]
    meta = SAEMetadata(hook_name=hook_name, model_name=model_name)
    cfg = MSAEConfig(
        d_in=d, d_sae=n, k_start=64, k_factor=2,
        k_levels=None if k_levels is None else [int(k) for k in k_levels],
        dtype=dtype, apply_b_dec_to_input=True, normalize_activations="none", metadata=meta,
    )
    sae = MSAE(cfg)
    dt = sae.dtype
    state = {
        "W_enc": w["encoder"], "b_enc": w["latent_bias"], "W_dec": w["decoder"],
        "b_dec": w["pre_bias"], "input_mean": mean,
        "input_scale": torch.tensor(scale), "input_stats_fitted": torch.tensor(1.0),
    }
    sae.load_state_dict({k: v.to(dt).contiguous() for k, v in state.items()}, strict=True)
    return sae


def convert_reference_checkpoint(src: str | Path, out_dir: str | Path, **options: Any) -> Any:
    """Write ``src`` (reference layout) to ``out_dir`` as an SAELens ``msae`` checkpoint.

    ``out_dir`` is checked before the file is read; ``cfg.json`` and ``sae_weights.safetensors``
    are staged next to it and moved in whole, ``cfg.json`` last, so a killed run leaves the old
    files or the new ones (other files in ``out_dir`` are kept). ``options`` are those of
    :func:`load_reference_checkpoint`. Returns the loaded MSAE.
    """
    from msae_plugin.atomic_io import staged_files
    from msae_plugin.preflight import ensure_writable_dir

    out = ensure_writable_dir(
        out_dir, f"output folder {out_dir}", "Choose a folder you can write to (OUT_DIR)."
    )
    sae = load_reference_checkpoint(src, **options)
    with staged_files(out, last=("cfg.json",)) as tmp:
        sae.save_model(tmp)
    return sae
