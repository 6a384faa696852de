"""A registered architecture name must be what its config classes call themselves.

SAELens writes ``cfg.architecture()`` into ``cfg.json`` and picks the class to rebuild by that
string. A plugin whose config says another name would save as that architecture and reload as a
different class with no warning; registration refuses such a spec instead (a warning naming the
plugin, nothing registered).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from sae_lens import SAE
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.standard_sae import (
    StandardSAE,
    StandardSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
)

from msae_plugin.errors import PluginSpecError
from msae_plugin.hookspecs import hookimpl
from msae_plugin.manager import create_plugin_manager
from msae_plugin.registration import REGISTRATIONS, PluginHookWarning, activate
from msae_plugin.specs import ArchitectureSpec


@dataclass
class GoodConfig(StandardSAEConfig):
    @classmethod
    def architecture(cls) -> str:
        return "names_test_good"


@dataclass
class GoodTrainingConfig(StandardTrainingSAEConfig):
    @classmethod
    def architecture(cls) -> str:
        return "names_test_good"

    def get_inference_config_class(self) -> type:
        return GoodConfig


class GoodSAE(StandardSAE):
    pass


class GoodTrainingSAE(StandardTrainingSAE):
    pass


@dataclass
class ForgotToRenameConfig(StandardSAEConfig):
    """The classic mistake: subclassed, but ``architecture()`` still says ``'standard'``."""


class _Plugin:
    def __init__(self, specs: list[ArchitectureSpec]):
        self.specs = specs

    @hookimpl
    def msae_register_architectures(self) -> list[ArchitectureSpec]:
        return self.specs


def _activate_with(name: str, specs: list[ArchitectureSpec]) -> None:
    pm = create_plugin_manager(load_entry_points=False)
    pm.register(_Plugin(specs), name=name)
    activate(pm)


@pytest.fixture
def clean_registry():
    """Remove whatever these tests register, so the global registries stay as they were."""
    names = ["names_test_good", "names_test_bad"]
    yield
    for name in names:
        SAE_CLASS_REGISTRY.pop(name, None)
        SAE_TRAINING_CLASS_REGISTRY.pop(name, None)
        for kind in ("architecture", "training_architecture"):
            REGISTRATIONS.pop((kind, name), None)


def test_inference_config_with_another_name_is_refused(clean_registry):
    spec = ArchitectureSpec("names_test_bad", StandardSAE, ForgotToRenameConfig)
    with pytest.warns(PluginHookWarning, match=r"'names_plugin'.*returns 'standard'.*names_test_bad"):
        _activate_with("names_plugin", [spec])
    assert "names_test_bad" not in SAE_CLASS_REGISTRY
    assert SAE_CLASS_REGISTRY["standard"][1] is StandardSAEConfig  # the built-in is untouched


def test_training_config_with_another_name_is_refused(clean_registry):
    spec = ArchitectureSpec(
        "names_test_good", GoodSAE, GoodConfig, GoodTrainingSAE, StandardTrainingSAEConfig
    )
    with pytest.warns(PluginHookWarning, match=r"training_config_class.*returns 'standard'"):
        _activate_with("names_plugin", [spec])
    # refused as a whole: the (correct) inference half is not registered either
    assert "names_test_good" not in SAE_CLASS_REGISTRY
    assert "names_test_good" not in SAE_TRAINING_CLASS_REGISTRY


def test_message_names_the_fix():
    from msae_plugin.registration import _check_config_name

    spec = ArchitectureSpec("names_test_bad", StandardSAE, ForgotToRenameConfig)
    with pytest.raises(PluginSpecError) as info:
        _check_config_name(spec, "sae_config_class", ForgotToRenameConfig)
    msg = str(info.value)
    assert "ForgotToRenameConfig" in msg
    assert "Make architecture() return 'names_test_bad'" in msg


def test_config_without_architecture_method_is_refused():
    from msae_plugin.registration import _check_config_name

    spec = ArchitectureSpec("names_test_bad", StandardSAE, dict)
    with pytest.raises(PluginSpecError, match="no architecture"):
        _check_config_name(spec, "sae_config_class", dict)


def test_matching_names_register_and_round_trip(clean_registry, tmp_path: Path):
    spec = ArchitectureSpec(
        "names_test_good", GoodSAE, GoodConfig, GoodTrainingSAE, GoodTrainingConfig
    )
    _activate_with("names_plugin", [spec])
    assert SAE_CLASS_REGISTRY["names_test_good"] == (GoodSAE, GoodConfig)
    assert SAE_TRAINING_CLASS_REGISTRY["names_test_good"] == (GoodTrainingSAE, GoodTrainingConfig)
    sae = GoodSAE(GoodConfig(d_in=4, d_sae=8))
    sae.save_model(tmp_path)
    assert type(SAE.load_from_disk(tmp_path)) is GoodSAE


def test_builtin_msae_spec_names_agree():
    from msae_plugin.msae.config import MSAEConfig, MSAETrainingSAEConfig

    assert MSAEConfig.architecture() == MSAETrainingSAEConfig.architecture() == "msae"
    assert REGISTRATIONS[("architecture", "msae")].obj is SAE_CLASS_REGISTRY["msae"][0]
