"""atomic_io.staged_files: the final SAE lands file by file, each whole, the config last."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from msae_plugin import atomic_io
from msae_plugin.atomic_io import staged_files


def test_files_arrive_whole_with_the_config_last(tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "notes.txt").write_text("the user's own file")
    (dest / "cfg.json").write_text("old")
    moved: list[str] = []
    real_replace = os.replace

    def recording_replace(src, dst):
        moved.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(atomic_io.os, "replace", recording_replace)
    with staged_files(dest, last=("cfg.json",)) as staging:
        (staging / "cfg.json").write_text("new")
        (staging / "weights.safetensors").write_bytes(b"w" * 100)
        (staging / "runner_cfg.json").write_text("{}")
    assert moved[-1] == "cfg.json" and sorted(moved) == sorted(
        ["cfg.json", "weights.safetensors", "runner_cfg.json"])
    assert (dest / "cfg.json").read_text() == "new"
    assert (dest / "notes.txt").read_text() == "the user's own file"  # not replaced wholesale
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # staging folder removed


def test_an_error_changes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "cfg.json").write_text("old")
    with pytest.raises(RuntimeError), staged_files(dest, last=("cfg.json",)) as staging:
        (staging / "cfg.json").write_text("new")
        raise RuntimeError("killed while saving")
    assert (dest / "cfg.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_checkpoint_files_get_the_usual_mode(tmp_path: Path) -> None:
    """Atomic saves go through atomic_io (a named temporary file, not mkstemp's 0600), so a saved
    SAE or decoder can be read by the group/others exactly like a file written with open()."""
    import stat

    import torch

    from msae_plugin.msae.config import MSAEConfig
    from msae_plugin.msae.sae import MSAE

    umask = os.umask(0o022)
    try:
        expected = 0o644
        MSAE(MSAEConfig(d_in=8, d_sae=32, k_start=4)).save_model(tmp_path / "sae")
        atomic_io.atomic_write(tmp_path / "t.pt", lambda p: torch.save({"x": torch.ones(1)}, p))
        from safetensors.torch import save_file

        with staged_files(tmp_path / "staged") as staging:  # what SAELens's own saves go through
            save_file({"x": torch.ones(1)}, str(staging / "w.safetensors"))
    finally:
        os.umask(umask)
    for file in [*(tmp_path / "sae").iterdir(), tmp_path / "t.pt",
                 tmp_path / "staged" / "w.safetensors"]:
        assert stat.S_IMODE(file.stat().st_mode) == expected, file
