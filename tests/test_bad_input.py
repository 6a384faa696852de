"""Each bad input gets a clear error naming the problem and the fix."""

import json

import pluggy
import pytest
import torch
from sae_lens import SAE
from sae_lens.config import SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer

from msae_plugin import __version__
from msae_plugin.errors import (
    ActivationShapeError,
    CheckpointError,
    MSAEConfigError,
    NonFiniteActivationsError,
    UnknownArchitectureError,
)
from msae_plugin.hookspecs import hookimpl
from msae_plugin.manager import create_plugin_manager
from msae_plugin.msae.config import MSAEConfig, MSAETrainingSAEConfig
from msae_plugin.msae.sae import MSAE
from msae_plugin.msae.training_sae import MSAETrainingSAE
from msae_plugin.registration import PluginHookWarning, activate
from msae_plugin.registry_errors import get_sae_class, get_sae_training_class


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k_levels": []}, "k_levels is empty"),
        ({"k_levels": [8, 4]}, "strictly increasing"),
        ({"k_levels": [4, 4]}, "strictly increasing"),
        ({"k_levels": [4, 128]}, "exceeds d_sae=64"),
        ({"k_start": 128}, "k_start=128 exceeds d_sae=64"),
        ({"k_factor": 1}, "k_factor"),
        ({"default_k": 65}, "default_k=65"),
        ({"weighting": "XW"}, "'UW' or 'RW'"),
        ({"normalize_activations": "expected_average_only_in"}, "normalize_activations='none'"),
    ],
)
def test_bad_configs(kwargs, match):
    with pytest.raises(MSAEConfigError, match=match):
        MSAETrainingSAEConfig(d_in=8, d_sae=64, **kwargs)


def test_k_above_d_sae_at_inference():
    sae = MSAE(MSAEConfig(d_in=8, d_sae=64, k_start=4))
    with pytest.raises(MSAEConfigError, match=r"k=65 exceeds d_sae=64.*k=None"):
        sae.encode(torch.randn(2, 8), k=65)
    with pytest.raises(MSAEConfigError, match="positive integer"):
        sae.encode(torch.randn(2, 8), k=0)


def test_wrong_width():
    sae = MSAE(MSAEConfig(d_in=8, d_sae=64, k_start=4))
    sae.cfg.metadata.hook_name = "blocks.3.hook_resid_post"
    with pytest.raises(ActivationShapeError, match=r"d_in=8 \(trained on hook 'blocks.3"):
        sae.encode(torch.randn(2, 9))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_batch_refused_by_trainer(bad):
    sae = MSAETrainingSAE(MSAETrainingSAEConfig(d_in=8, d_sae=32, k_start=4))

    def provider():
        x = torch.randn(16, 8)
        x[3, 2] = bad
        while True:
            yield x

    before = {k: v.clone() for k, v in sae.state_dict().items()}
    trainer = SAETrainer(
        SAETrainerConfig(total_training_samples=64, train_batch_size_samples=16, lr_end=1e-4),
        sae,
        provider(),
    )
    with pytest.raises(NonFiniteActivationsError, match="refusing to train"):
        trainer.fit()
    for k, v in sae.state_dict().items():  # nothing was learned from it
        assert torch.equal(v, before[k]), k


def test_unknown_architecture_lists_known_and_suggests():
    with pytest.raises(UnknownArchitectureError, match=r"'mase'.*Did you mean 'msae'.*topk"):
        get_sae_class("mase")
    with pytest.raises(UnknownArchitectureError, match="training architectures"):
        get_sae_training_class("nope")


@pytest.fixture
def saved(tmp_path):
    sae = MSAE(MSAEConfig(d_in=8, d_sae=32, k_start=4))
    sae.save_model(tmp_path)
    return tmp_path


def test_truncated_safetensors(saved):
    w = saved / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        MSAE.load_from_disk(saved)


def test_garbage_safetensors(saved):
    (saved / "sae_weights.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        MSAE.load_from_disk(saved)


def test_missing_file_and_bad_json(saved):
    (saved / "cfg.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        MSAE.load_from_disk(saved)
    (saved / "cfg.json").unlink()
    with pytest.raises(CheckpointError, match="cfg.json is missing"):
        MSAE.load_from_disk(saved)


def test_cfg_missing_fields(saved):
    cfg = json.loads((saved / "cfg.json").read_text())
    del cfg["d_sae"]
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(MSAEConfigError, match=r"missing required field\(s\) \['d_sae'\]"):
        MSAE.load_from_disk(saved)


def test_cfg_from_newer_plugin(saved):
    cfg = json.loads((saved / "cfg.json").read_text())
    assert cfg["msae_version"] == __version__
    cfg["msae_version"] = "99.0.0"
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(MSAEConfigError, match="newer than the installed.*pip install -U"):
        SAE.load_from_disk(saved)


def test_unknown_architecture_in_checkpoint(saved):
    cfg = json.loads((saved / "cfg.json").read_text())
    cfg["architecture"] = "msae_from_the_future"
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(UnknownArchitectureError, match="msae_from_the_future"):
        MSAE.load_from_disk(saved)


def test_mismatched_weights(saved):
    cfg = json.loads((saved / "cfg.json").read_text())
    cfg["d_sae"] = 64
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"'W_dec'.*shape \[32, 8\].*d_sae=64\) implies \[64, 8\]"):
        MSAE.load_from_disk(saved)


class _RaisingPlugin:
    @hookimpl
    def msae_register_architectures(self):
        raise RuntimeError("boom")


def test_raising_plugin_hook_is_a_warning_not_a_crash():
    pm = create_plugin_manager(load_entry_points=True)
    pm.register(_RaisingPlugin(), name="raiser")
    with pytest.warns(PluginHookWarning, match=r"'raiser'.*boom"):
        regs = activate(pm)
    assert ("architecture", "msae") in regs
    assert isinstance(pm, pluggy.PluginManager)
