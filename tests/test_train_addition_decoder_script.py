"""scripts/train_addition_decoder.py --init-from: continue training a released decoder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "msae_plugin" / "inversionview" / "data" / "addition_decoder"


def _script():
    spec = importlib.util.spec_from_file_location("train_addition_decoder",
                                                  ROOT / "scripts" / "train_addition_decoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_init_from_starts_at_the_released_weights(tmp_path: Path) -> None:
    from msae_plugin.inversionview import addition_decoder as AD
    from msae_plugin.inversionview.checkpoint import load_decoder

    # two steps at a vanishing learning rate: the result is the shipped decoder, not a fresh one
    args = [str(tmp_path / "run"), "--init-from", str(SHIPPED), "--steps", "2", "--save-every",
            "2", "--warmup", "0", "--lr", "1e-12", "--eval-queries", "1", "--threads", "1",
            "--no-progress"]
    assert _script().main(args) == 0
    probed = AD.load_shipped_probed_model()
    shipped, _ = load_decoder(SHIPPED, probed)
    cont, meta = load_decoder(tmp_path / "run", probed)
    for (name, a), b in zip(shipped.state_dict().items(), cont.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)
    shipped_training = json.loads((SHIPPED / "decoder_cfg.json").read_text())["training"]
    before = shipped_training["steps_done"] + shipped_training.get("steps_before", 0)
    assert before == 75500  # the shipped decoder: 44,000 + 7,500 + 24,000 steps
    assert meta["training"]["steps_before"] == before and meta["training"]["steps_done"] == 2
    log = json.loads((tmp_path / "run" / "eval_log.json").read_text())
    assert log[-1]["total_steps"] == before + 2


def test_init_from_a_decoder_of_another_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"differs from this run's.*--d-model"):
        _script().main([str(tmp_path / "run"), "--init-from", str(SHIPPED), "--d-model", "64",
                        "--steps", "1", "--threads", "1", "--no-progress"])
