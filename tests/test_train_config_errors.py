"""Every config mistake a user can make in ``msae train`` gets one clear sentence.

From the API: :class:`VisionConfigError` (or the project class for the problem) with a message
that names the field, what it needs and what it got. From the CLI: ``error: ...`` on stderr,
exit status 2, no traceback, and no model loaded or work started. Each row is a mistake found by
an outside review (a YAML tab, strings or fractions where numbers belong, a negative or NaN
learning rate, an invalid ladder, ``device: cuda`` without a GPU, an output path under a file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import msae_plugin
from msae_plugin.errors import DeviceUnavailableError, OutputPathError
from msae_plugin.vision.training import (
    VisionConfigError,
    VisionSAERunnerConfig,
    VisionSAETrainingRunner,
)

msae_plugin.register()

BASE: dict[str, Any] = {
    "sae": {"architecture": "msae", "d_in": 96, "d_sae": 256, "k_start": 16},
    "model_name": "msae-tiny-clip",
    "hook_name": "blocks.2.hook_resid_post",
    "training_tokens": 8192,
    "train_batch_size_tokens": 4096,
    "lr": 5e-4,
    "verbose": False,
}


def with_field(key: str, value: Any) -> dict[str, Any]:
    """BASE with ``key`` (``"sae.x"`` reaches into the sae section) set to ``value``."""
    cfg = json.loads(json.dumps(BASE))
    if key.startswith("sae."):
        cfg["sae"][key[4:]] = value
    else:
        cfg[key] = value
    return cfg


# (config change, exception class, pieces of the message)
CONFIG_ROWS = [
    pytest.param("training_tokens", "lots", VisionConfigError,
                 ["training_tokens must be a whole number", "the string 'lots'"], id="tokens-str"),
    pytest.param("training_tokens", 8192.5, VisionConfigError,
                 ["training_tokens must be a whole number", "8192.5"], id="tokens-fraction"),
    pytest.param("lr", "fast", VisionConfigError,
                 ["lr must be a number", "the string 'fast'"], id="lr-str"),
    pytest.param("lr", -1e-3, VisionConfigError,
                 ["lr must be a positive learning rate", "-0.001"], id="lr-negative"),
    pytest.param("lr", float("nan"), VisionConfigError,
                 ["lr must be a finite number", "nan"], id="lr-nan"),
    pytest.param("sae.d_in", "96", VisionConfigError,
                 ["sae.d_in must be a whole number", "the string '96'",
                  "without the quotes"], id="sae-d_in-quoted"),
    pytest.param("sae.k_levels", [64, 16], VisionConfigError,
                 ["bad sae config for 'msae'", "k_levels must be strictly increasing"],
                 id="ladder-unsorted"),
    pytest.param("sae.weighting", "XW", VisionConfigError,
                 ["sae.weighting must be one of 'RW', 'UW'", "'XW'"], id="weighting"),
    pytest.param("verbose", 1, VisionConfigError,
                 ["verbose must be true or false", "1 (int)"], id="bool-as-int"),
    pytest.param("n_checkpoints", True, VisionConfigError,
                 ["n_checkpoints must be a whole number", "True (bool)"], id="int-as-bool"),
    pytest.param("adam_beta1", 1.5, VisionConfigError,
                 ["adam_beta1 must be in [0, 1)"], id="beta"),
    pytest.param("logger", "wandb", VisionConfigError,
                 ['"logger" must be an object', "got str"], id="logger-str"),
]


@pytest.mark.parametrize("key, value, exc, pieces", CONFIG_ROWS)
def test_bad_config_values_api(tmp_path: Path, key, value, exc, pieces) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(with_field(key, value)))  # NaN is written as NaN (Python's JSON)
    with pytest.raises(exc) as err:
        VisionSAERunnerConfig.from_file(path)
    for piece in pieces:
        assert piece in str(err.value)


@pytest.mark.parametrize("key, value, exc, pieces", CONFIG_ROWS)
def test_bad_config_values_cli(tmp_path: Path, capsys, key, value, exc, pieces) -> None:
    from msae_plugin.cli import main

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(with_field(key, value)))
    assert main(["train", str(path)]) == 2
    out = capsys.readouterr()
    assert out.err.startswith("error: ") and "Traceback" not in out.err + out.out
    for piece in pieces:
        assert piece in out.err


def test_integral_float_from_json_is_accepted_as_int(tmp_path: Path) -> None:
    """``2e6`` in JSON is a float; it is a whole number, so it is taken as the int 2000000."""
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(with_field("training_tokens", 2e6)))
    cfg = VisionSAERunnerConfig.from_file(path)
    assert cfg.training_tokens == 2_000_000 and type(cfg.training_tokens) is int


def test_yaml_with_a_tab(tmp_path: Path, capsys) -> None:
    from msae_plugin.cli import main

    path = tmp_path / "cfg.yaml"
    path.write_text("sae:\n\tarchitecture: msae\n\td_in: 96\n\td_sae: 256\n")
    with pytest.raises(VisionConfigError, match="is not valid YAML.*indent with spaces"):
        VisionSAERunnerConfig.from_file(path)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "tab" in err and "Traceback" not in err


def test_yaml_exponent_floats_are_numbers(tmp_path: Path) -> None:
    """PyYAML reads ``3e-4`` as a string (YAML 1.1); configs read it as the number it is,
    while a quoted ``"3e-4"`` stays a string and is refused."""
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 3e-4\nsae: {architecture: msae, d_in: 96, d_sae: 256, k_start: 16}\n")
    assert VisionSAERunnerConfig.from_file(path).lr == pytest.approx(3e-4)
    path.write_text('lr: "3e-4"\nsae: {architecture: msae, d_in: 96, d_sae: 256}\n')
    with pytest.raises(VisionConfigError, match="lr must be a number, got the string '3e-4'"):
        VisionSAERunnerConfig.from_file(path)


def test_api_config_types_are_checked_too(tmp_path: Path) -> None:
    from msae_plugin.msae.config import MSAETrainingSAEConfig

    sae = MSAETrainingSAEConfig(d_in=96, d_sae=256, k_start=16)
    with pytest.raises(VisionConfigError, match="training_tokens must be a whole number"):
        VisionSAERunnerConfig(sae=sae, training_tokens=8192.5, checkpoint_path=None)
    with pytest.raises(VisionConfigError, match="lr must be a finite number"):
        VisionSAERunnerConfig(sae=sae, lr=float("inf"), checkpoint_path=None)


# ---- problems found before the model is loaded -----------------------------------------------
def _no_model_load(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any attempt to load a model: these errors must come before that work."""
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP

    loads: list[str] = []
    monkeypatch.setattr(HookedOpenCLIP, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append("load")))
    return loads


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_gpu(tmp_path: Path, capsys, monkeypatch) -> None:
    from msae_plugin.cli import main

    loads = _no_model_load(monkeypatch)
    cfg = {**BASE, "device": "cuda", "output_path": str(tmp_path / "o"),
           "checkpoint_path": str(tmp_path / "c")}
    with pytest.raises(DeviceUnavailableError, match="device='cuda' but no CUDA GPU.*device=cpu"):
        VisionSAETrainingRunner(VisionSAERunnerConfig.from_dict(cfg))
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    assert main(["train", str(path)]) == 2
    assert "error: device='cuda' but no CUDA GPU is available" in capsys.readouterr().err
    assert loads == []


@pytest.mark.parametrize("field", ["output_path", "checkpoint_path"])
def test_output_paths_under_a_file_fail_before_any_work(
    tmp_path: Path, capsys, monkeypatch, field: str
) -> None:
    from msae_plugin.cli import main

    loads = _no_model_load(monkeypatch)
    blocker = tmp_path / "results.txt"
    blocker.write_text("a file, not a folder")
    cfg = {**BASE, "output_path": str(tmp_path / "out"), "checkpoint_path": str(tmp_path / "ck"),
           field: str(blocker / "run1")}
    with pytest.raises(OutputPathError, match=f"{field}=.*is a file, not a folder. Choose another {field}"):
        VisionSAETrainingRunner(VisionSAERunnerConfig.from_dict(cfg))
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{blocker}" in err and "Traceback" not in err
    assert loads == []


def test_output_paths_are_created_before_training(tmp_path: Path, monkeypatch) -> None:
    loads = _no_model_load(monkeypatch)
    cfg = {**BASE, "output_path": str(tmp_path / "a" / "out"),
           "checkpoint_path": str(tmp_path / "b" / "ck")}
    with pytest.raises(AttributeError):  # the stubbed model load returned None
        VisionSAETrainingRunner(VisionSAERunnerConfig.from_dict(cfg))
    assert loads == ["load"]
    assert (tmp_path / "a" / "out").is_dir() and (tmp_path / "b" / "ck").is_dir()


def test_config_path_that_is_a_folder_or_missing(tmp_path: Path) -> None:
    with pytest.raises(VisionConfigError, match="is a folder; pass the JSON/YAML file inside it"):
        VisionSAERunnerConfig.from_file(tmp_path)
    with pytest.raises(VisionConfigError, match="does not exist"):
        VisionSAERunnerConfig.from_file(tmp_path / "missing.json")
