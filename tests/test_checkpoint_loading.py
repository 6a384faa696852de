"""Bad MSAE checkpoints give a CheckpointError naming the file/field/tensor and the fix, through
every loader a user may call: MSAE.load_from_disk, MSAETrainingSAE.load_from_disk, and SAELens's
own base-class SAE.load_from_disk / TrainingSAE.load_from_disk (which SAELens resolves through the
registry only after reading the files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import edit_cfg
from sae_lens import SAE
from sae_lens.saes.sae import TrainingSAE
from safetensors.torch import load_file, save_file

from msae_plugin.errors import (
    CheckpointArchitectureError,
    CheckpointConfigError,
    CheckpointError,
    MSAEConfigError,
    UnknownArchitectureError,
)
from msae_plugin.msae.checkpoint_check import validate_checkpoint
from msae_plugin.msae.config import MSAEConfig
from msae_plugin.msae.sae import MSAE
from msae_plugin.msae.training_sae import MSAETrainingSAE

LOADERS = [SAE.load_from_disk, TrainingSAE.load_from_disk, MSAE.load_from_disk,
           MSAETrainingSAE.load_from_disk]
IDS = ["SAE", "TrainingSAE", "MSAE", "MSAETrainingSAE"]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    import msae_plugin

    msae_plugin.register()
    torch.manual_seed(0)
    MSAE(MSAEConfig(d_in=8, d_sae=32, k_start=4)).save_model(tmp_path)
    return tmp_path


def edit_weights(path: Path, name: str, fn) -> None:
    tensors = load_file(path / "sae_weights.safetensors")
    tensors[name] = fn(tensors[name])
    save_file(tensors, path / "sae_weights.safetensors")


def test_good_checkpoint_loads_through_every_loader(saved: Path) -> None:
    want = load_file(saved / "sae_weights.safetensors")
    for load, cls in zip(LOADERS, [MSAE, MSAETrainingSAE, MSAE, MSAETrainingSAE], strict=True):
        sae = load(saved)
        assert type(sae) is cls
        for k, v in want.items():
            assert torch.equal(sae.state_dict()[k], v), k


def test_loader_options_pass_through(saved: Path) -> None:
    """SAELens's own parameters, by position or by name, reach the MSAE loader."""
    assert SAE.load_from_disk(saved, "cpu", "float64").W_enc.dtype == torch.float64
    sae = TrainingSAE.load_from_disk(saved, device="cpu", dtype="float16")
    assert type(sae) is MSAETrainingSAE and sae.W_dec.dtype == torch.float16


def test_custom_converter_skips_the_layout_checks(saved: Path) -> None:
    """A converter reads its own layout: the SAELens-layout checks must not refuse it."""
    from sae_lens.loading.pretrained_sae_loaders import sae_lens_disk_loader

    (saved / "cfg.json").rename(saved / "config.json")

    def converter(path, device, cfg_overrides=None):
        (Path(path) / "config.json").rename(Path(path) / "cfg.json")
        try:
            return sae_lens_disk_loader(path, device, cfg_overrides)
        finally:
            (Path(path) / "cfg.json").rename(Path(path) / "config.json")

    for load in (SAE.load_from_disk, MSAE.load_from_disk):
        assert type(load(saved, converter=converter)) is MSAE


@pytest.mark.parametrize("load", LOADERS, ids=IDS)
def test_truncated_weights(saved: Path, load) -> None:
    w = saved / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="sae_weights.safetensors cannot be read.*truncated"):
        load(saved)


@pytest.mark.parametrize("load", LOADERS, ids=IDS)
def test_cfg_not_json(saved: Path, load) -> None:
    (saved / "cfg.json").write_text('{"architecture": "msae", "d_in"')
    with pytest.raises(CheckpointError, match="cfg.json is not valid JSON.*corrupt or truncated"):
        load(saved)


@pytest.mark.parametrize("load", LOADERS, ids=IDS)
def test_cfg_missing_d_sae(saved: Path, load) -> None:
    edit_cfg(saved, d_sae=None)
    with pytest.raises(CheckpointConfigError, match=r"missing required field\(s\) \['d_sae'\]"):
        load(saved)
    # one class, two catchable names: earlier releases raised MSAEConfigError here
    assert issubclass(CheckpointConfigError, CheckpointError)
    assert issubclass(CheckpointConfigError, MSAEConfigError)


@pytest.mark.parametrize("load", LOADERS, ids=IDS)
def test_unknown_architecture(saved: Path, load) -> None:
    edit_cfg(saved, architecture="mase")
    with pytest.raises(CheckpointArchitectureError, match=r"'mase'.*Did you mean 'msae'") as exc:
        load(saved)
    assert isinstance(exc.value, UnknownArchitectureError)


@pytest.mark.parametrize("load", LOADERS, ids=IDS)
def test_d_sae_not_matching_weights(saved: Path, load) -> None:
    edit_cfg(saved, d_sae=64)
    with pytest.raises(CheckpointError, match=r"tensor 'W_\w+'.*\(d_in=8, d_sae=64\) implies"):
        load(saved)


@pytest.mark.parametrize("load", LOADERS, ids=IDS)
def test_missing_tensor(saved: Path, load) -> None:
    tensors = load_file(saved / "sae_weights.safetensors")
    del tensors["b_enc"]
    save_file(tensors, saved / "sae_weights.safetensors")
    with pytest.raises(CheckpointError, match=r"missing \['b_enc'\], unexpected \[\]"):
        load(saved)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"d_in": "8"}, "d_in must be a positive integer, got '8'"),
        ({"d_sae": 0}, "d_sae must be a positive integer, got 0"),
        ({"dtype": "float33"}, "Invalid dtype: float33"),
        ({"dtype": None}, "no 'dtype' field"),
        ({"k_start": 64}, "k_start=64 exceeds d_sae=32"),
        ({"k_start": "4"}, r"field 'k_start' must be int, got '4' \(str\)"),
        ({"apply_b_dec_to_input": "yes"}, "field 'apply_b_dec_to_input' must be bool, got 'yes'"),
        ({"k_levels": [4.5, 8]}, r"field 'k_levels' must be list\[int\] \| None, got \[4.5, 8\]"),
        ({"default_k": "x"}, r"field 'default_k' must be int \| None"),
        ({"reshape_activations": "zzz"}, r"'reshape_activations' must be one of \['none', 'hook_z'\]"),
        ({"metadata": "x"}, "'metadata' must be a JSON object, got 'x'"),
    ],
)
def test_bad_cfg_fields(saved: Path, changes, match) -> None:
    edit_cfg(saved, **changes)
    for load in LOADERS:
        with pytest.raises(CheckpointConfigError, match=match):
            load(saved)


def test_non_finite_weights_only_with_check_values(saved: Path) -> None:
    def poison(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t[0, 1] = float("nan")
        t[2, 3] = float("inf")
        return t

    edit_weights(saved, "W_enc", poison)
    with pytest.raises(CheckpointError, match=r"tensor 'W_enc'.*2 non-finite value\(s\) \(NaN and inf\)"):
        validate_checkpoint(saved, check_values=True)
    assert validate_checkpoint(saved).architecture == "msae"  # loading checks headers only


def test_other_architectures_untouched(tmp_path: Path) -> None:
    """The dispatcher only reroutes plugin architectures: a SAELens standard SAE loads as before
    and its errors stay SAELens's own."""
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    StandardSAE(StandardSAEConfig(d_in=4, d_sae=8)).save_model(tmp_path)
    assert type(SAE.load_from_disk(tmp_path)) is StandardSAE
    (tmp_path / "sae_weights.safetensors").unlink()
    with pytest.raises(Exception) as exc:
        SAE.load_from_disk(tmp_path)
    assert not isinstance(exc.value, CheckpointError)


def test_valid_variants_still_load(saved: Path) -> None:
    """The type check accepts what SAELens itself writes or accepts: ints for float fields,
    ``null`` for optional ones, other dtypes, unknown metadata keys."""
    edit_cfg(saved, k_levels=[4, 8, 32], default_k=None, dtype="float16",
             metadata={"hook_name": "blocks.0.hook_resid_post", "extra": 1})
    for load in LOADERS:
        sae = load(saved)
        assert sae.cfg.k_levels == [4, 8, 32] and sae.W_enc.dtype == torch.float16


@pytest.mark.slow  # a fresh interpreter imports torch + sae_lens
def test_fresh_interpreter_without_importing_the_plugin(saved: Path) -> None:
    """The user's case: only `from sae_lens import SAE` (the plugin activates itself)."""
    import subprocess
    import sys

    w = saved / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:-50])
    code = ("from sae_lens import SAE\n"
            f"try:\n    SAE.load_from_disk({str(saved)!r})\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.stdout.startswith("CheckpointError "), proc.stdout + proc.stderr
    assert "sae_weights.safetensors cannot be read as safetensors" in proc.stdout
