"""``msae remapping`` on the shipped SAE and the shipped fine-tuned model (small run): tables,
JSON and PNGs written, Δ consistent with the accuracies, and the command's bad inputs."""

from __future__ import annotations

import json

import pytest

from msae_plugin.cli import main
from msae_plugin.remapping import improvement_rate


def test_cli_writes_tables_json_and_figures(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["remapping", "--adapted", "finetune", "--n-train", "200", "--n-test", "100",
                 "--ks", "10", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "== base vs finetune" in text and "% of the gain kept" in text
    report = json.loads((out / "remapping.json").read_text())
    rows = report["models"]["finetune"]["protocol"]
    assert [r["split"] for r in rows] == ["base", "novel"]
    for r in rows:
        assert r["delta"] == pytest.approx(100 * improvement_rate(r["base_acc"], r["finetune_acc"]))
    assert rows[0]["finetune_acc"] > rows[0]["base_acc"] + 10  # adaptation helps its classes
    base = report["models"]["finetune"]["base"]
    assert base["masking"]["base"]["ks"] == [10, 1024]
    for name in ("statistics", "masking", "groups", "patch_view"):
        assert (out / f"{name}_finetune.png").stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["--upper-rank", "100", "--lower-rank", "50"], "must be below --lower-rank"),
    (["--adapted", "no-such-model"], "neither a shipped adapted model"),
    (["--ks", "5000", "--n-train", "100", "--n-test", "50", "--adapted", "finetune"],
     "outside 1..d_sae=1024"),
    (["--sae", "no-such-release:blocks.2.hook_resid_post"], "no-such-release"),
])
def test_cli_bad_inputs(tmp_path, capsys, argv, message):
    assert main(["remapping", *argv, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_cli_on_an_embedding_hook_sae(tmp_path, capsys):
    """An SAE on hook_image_embed compares the models in CLIP space: no per-patch view."""
    out = tmp_path / "e"
    assert main(["remapping", "--sae", "msae-tiny-clip-msae:hook_image_embed", "--adapted",
                 "finetune", "--n-train", "100", "--n-test", "60", "--ks", "5", "--out",
                 str(out)]) == 0
    assert (out / "masking_finetune.png").is_file() and not (out / "patch_view_finetune.png").exists()


def test_cli_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["remapping", "--tau", "0"])
    assert exc.value.code == 2 and "must be > 0" in capsys.readouterr().err
