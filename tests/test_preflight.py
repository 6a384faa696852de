"""msae_plugin.preflight: the one implementation of "can this folder / device be used?" that the
CLI commands and the vision training runner call before any work."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from msae_plugin.errors import DeviceUnavailableError, OutputPathError
from msae_plugin.preflight import check_device, ensure_writable_dir


def test_creates_missing_folders_and_leaves_no_probe(tmp_path: Path) -> None:
    out = ensure_writable_dir(tmp_path / "a" / "b", "--out x", "Fix.")
    assert out.is_dir() and list(out.iterdir()) == []


def test_file_in_the_way(tmp_path: Path) -> None:
    blocker = tmp_path / "f"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match=r"^--out f is a file, not a folder\. Fix\.$"):
        ensure_writable_dir(blocker, "--out f", "Fix.")
    with pytest.raises(OutputPathError, match=rf"cannot be created: {blocker} is a file"):
        ensure_writable_dir(blocker / "sub" / "deeper", "--out g", "Fix.")
    assert not (tmp_path / "sub").exists()


def test_unwritable_folder_uses_the_callers_error(tmp_path: Path, monkeypatch) -> None:
    class Mine(ValueError):
        pass

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(Mine, match=r"is not writable \(Permission denied\)\. Fix\."):
        ensure_writable_dir(tmp_path, "--html x", "Fix.", error=Mine)


def test_devices() -> None:
    assert check_device("cpu", "device='cpu'", "Fix.") == torch.device("cpu")
    with pytest.raises(DeviceUnavailableError, match="is not a torch device name"):
        check_device("gpu0", "--device 'gpu0'", "Fix.")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(DeviceUnavailableError, match=r"device='cuda:\d+' but .*Fix\."):
        check_device(f"cuda:{n}", f"device='cuda:{n}'", "Fix.")  # one past the last GPU
