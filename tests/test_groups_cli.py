"""``msae groups`` on the shipped S4 model and a constructed S5 network, the hooked-model
registration through the installed entry point, and the command's bad inputs."""

from __future__ import annotations

import re

from msae_plugin.cli import main


def test_shipped_s4_model(capsys):
    assert main(["groups", "S4", "--tiers", "B", "C", "--rank", "16"]) == 0
    out = capsys.readouterr().out
    assert "brute-force accuracy over 576 pairs: 1.0000" in out
    r2 = float(re.search(r"R\^2 ([0-9.]+)", out).group(1))
    assert r2 > 0.9
    bounds = {m.group(1): float(m.group(2)) for m in re.finditer(r"\| (\w) \| \d+ \| ([0-9.]+) \|", out)}
    assert bounds["C"] == 1.0 and bounds["B"] <= 1.0  # tier C_16 certifies; every bound <= 1.0


def test_constructed_network_is_certified_by_the_compact_tier(capsys):
    assert main(["groups", "construct:S4", "--tiers", "B"]) == 0
    out = capsys.readouterr().out
    assert "R^2 1.000" in out and "| B | 0 | 1.000 |" in out


def test_bad_model_and_group(capsys, tmp_path):
    assert main(["groups", "S7"]) == 2
    assert "neither a shipped model" in capsys.readouterr().err
    assert main(["groups", "construct:X9"]) == 2
    assert "unknown group 'X9'" in capsys.readouterr().err
    assert main(["groups", "construct:S7"]) == 2
    assert "more than 720 elements" in capsys.readouterr().err


def test_group_model_is_registered_through_the_entry_point(capsys):
    assert main(["plugins"]) == 0
    assert re.search(r"hooked_model\s+GroupMLP\s+groups", capsys.readouterr().out)
