"""msae_plugin.safe_load: one tensors-only loader for every torch file read from disk.

A crafted pickle is refused as *unsafe* (naming the global it wanted) without running, and a
file that is merely damaged is reported as *corrupt*, not as an attack."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from msae_plugin.errors import CheckpointError, UnsafeCheckpointError
from msae_plugin.safe_load import load_torch_file


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tensors_and_plain_data_load(tmp_path: Path) -> None:
    state = {"w": torch.arange(4.0), "step": 3, "name": "x", "rng": torch.get_rng_state()}
    torch.save(state, tmp_path / "ok.pt")
    back = load_torch_file(tmp_path / "ok.pt", "load", "Fix it")
    assert torch.equal(back["w"], state["w"]) and back["step"] == 3 and back["name"] == "x"


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_crafted_pickle_is_unsafe_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"x": _Touch(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Touch(marker)))
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*\(it names .*system"):
        load_torch_file(path, "load", "Delete it")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04garbage"])
def test_damaged_files_are_corrupt_not_unsafe(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_torch_file(path, "load", "Re-create it")
    assert not isinstance(info.value, UnsafeCheckpointError), str(info.value)
    assert "Re-create it" in str(info.value)


def test_truncated_torch_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save({"w": torch.randn(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError) as info:
        load_torch_file(path, "load", "Fix")
    assert not isinstance(info.value, UnsafeCheckpointError)
