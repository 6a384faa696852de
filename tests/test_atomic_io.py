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
