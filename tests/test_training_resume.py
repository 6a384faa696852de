"""Resuming vision SAE training: the checkpoint schedule, untrusted trainer states, picking the
newest complete checkpoint by itself, and the atomic folder writes underneath.

The expected checkpoint names come from SAELens's own rule, computed here independently:
thresholds ``range(0, total, ceil(total / (n_checkpoints + 1)))[1:]``, and a checkpoint named
after the sample count of the first step that passes each threshold.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import tiny_clip
from sae_lens.constants import SAE_CFG_FILENAME, TRAINER_STATE_FILENAME

import msae_plugin
from msae_plugin.atomic_io import atomic_directory, atomic_write_text, remove_temporaries
from msae_plugin.errors import CheckpointError, UnsafeCheckpointError
from msae_plugin.registration import HOOKED_MODELS
from msae_plugin.vision.hooked_clip import HookedOpenCLIP
from msae_plugin.vision.training import (
    VisionSAERunnerConfig,
    VisionSAETrainingRunner,
    find_latest_checkpoint,
    validate_training_checkpoint,
)

msae_plugin.register()

BATCH = 68  # 4 images x 17 tokens
TOTAL = BATCH * 40
N_CHECKPOINTS = 4


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TinyCLIP(HookedOpenCLIP):
    """A hooked model loadable by name, as a plugin would register it (for the CLI)."""

    @classmethod
    def from_pretrained(cls, model_name: str, pretrained: Any = None, device: str = "cpu",
                        dtype: torch.dtype = torch.float32, **kw: Any) -> TinyCLIP:
        clip = tiny_clip()
        return cls(clip, model_name=model_name, pretrained=pretrained).to(device, dtype).eval()


def config_dict(root: Path, **kw: Any) -> dict[str, Any]:
    return {
        "sae": {"architecture": "msae", "d_in": 32, "d_sae": 64, "k_start": 4},
        "model_name": "tiny-test", "model_class_name": "TinyCLIP",
        "hook_name": "blocks.0.hook_resid_post", "dataset_kwargs": {"images_per_epoch": 256},
        "training_tokens": TOTAL, "train_batch_size_tokens": BATCH,
        "store_batch_size_images": 4, "n_batches_in_buffer": 2,
        "n_batches_for_norm_estimate": 2, "n_eval_batches": 1, "n_checkpoints": N_CHECKPOINTS,
        "checkpoint_path": str(root / "ckpt"), "output_path": str(root / "out"), "seed": 0,
        "verbose": False, **kw,
    }


@pytest.fixture()
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(HOOKED_MODELS, "TinyCLIP", TinyCLIP)


def train(root: Path, **kw: Any) -> VisionSAETrainingRunner:
    runner = VisionSAETrainingRunner(VisionSAERunnerConfig.from_dict(config_dict(root, **kw)))
    runner.run()
    return runner


def expected_names(total: int, n_checkpoints: int, batch: int) -> list[int]:
    """SAELens's checkpoint schedule for an uninterrupted run, computed independently."""
    step = math.ceil(total / (n_checkpoints + 1))
    return [(t // batch + 1) * batch for t in range(0, total, step)[1:]]


def names(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def test_resume_keeps_the_checkpoint_schedule(tmp_path: Path, registered: None) -> None:
    full = tmp_path / "full"
    train(full)
    schedule = expected_names(TOTAL, N_CHECKPOINTS, BATCH)
    assert names(full / "ckpt") == schedule  # 4 checkpoints, as SAELens's rule says

    third = full / "ckpt" / str(schedule[2])
    resumed = tmp_path / "resumed"
    runner = VisionSAETrainingRunner(
        VisionSAERunnerConfig.from_dict(config_dict(resumed)), resume_from_checkpoint=third
    )
    runner.run()
    assert runner.trainer is not None and runner.trainer.n_training_samples == TOTAL
    # only the checkpoint still ahead (before the fix: one on each of the first 3 steps too)
    assert names(resumed / "ckpt") == schedule[3:]


class _WritesMarker:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


def test_crafted_trainer_state_is_refused(
    tmp_path: Path, registered: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from msae_plugin.cli import main

    first = tmp_path / "run"
    train(first, training_tokens=BATCH * 10, n_checkpoints=1)
    ckpt = first / "ckpt" / str(names(first / "ckpt")[0])
    marker = tmp_path / "marker.txt"
    state = torch.load(ckpt / TRAINER_STATE_FILENAME, weights_only=True)
    torch.save({**state, "payload": _WritesMarker(marker)}, ckpt / TRAINER_STATE_FILENAME)

    with pytest.raises(UnsafeCheckpointError, match="refusing to load .*trainer_state.pt"):
        validate_training_checkpoint(ckpt)
    cfg = VisionSAERunnerConfig.from_dict(config_dict(tmp_path / "again", n_checkpoints=0))
    with pytest.raises(UnsafeCheckpointError, match="could run arbitrary code"):
        VisionSAETrainingRunner(cfg, resume_from_checkpoint=ckpt).run()

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config_dict(tmp_path / "cli", n_checkpoints=0)))
    assert main(["train", str(path), "--resume", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "error: refusing to load" in err and "Traceback" not in err
    assert re.search(r"\(it names [\w., ]+\)", err)  # the offending global, e.g. getattr
    assert not marker.exists()  # the payload never ran


def test_resume_alone_picks_the_newest_complete_checkpoint(
    tmp_path: Path, registered: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from msae_plugin.cli import main
    from msae_plugin.vision.training_checkpoints import VisionSAETrainer

    root = tmp_path / "run"
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config_dict(root)))
    # nothing to resume yet: --resume alone starts afresh
    assert main(["train", str(path), "--resume", "--override", f"training_tokens={BATCH * 10}",
                 "--override", "n_checkpoints=1"]) == 0
    capsys.readouterr()
    ckpt_root = root / "ckpt"
    good = ckpt_root / str(names(ckpt_root)[-1])
    # what a kill under an older version left: a newer, half-written folder...
    half = ckpt_root / "999999"
    shutil.copytree(good, half)
    (half / SAE_CFG_FILENAME).unlink()
    # ...and what a kill during an atomic write leaves: a hidden temporary folder
    tmp_folder = ckpt_root / ".1000000.tmp-0123456789ab"
    shutil.copytree(good, tmp_folder)
    with pytest.raises(CheckpointError, match=f"lacks {SAE_CFG_FILENAME}"):
        validate_training_checkpoint(half)
    assert find_latest_checkpoint(ckpt_root) == good
    assert find_latest_checkpoint(root) == good  # one level up works too

    loaded: list[Path] = []
    orig = VisionSAETrainer.load_trainer_state

    def spy(self: VisionSAETrainer, p: Any) -> None:
        loaded.append(Path(p))
        orig(self, p)

    VisionSAETrainer.load_trainer_state = spy  # type: ignore[method-assign]
    try:
        assert main(["train", str(path), "--resume", "--override",
                     f"training_tokens={BATCH * 12}", "--override", "n_checkpoints=0"]) == 0
    finally:
        VisionSAETrainer.load_trainer_state = orig  # type: ignore[method-assign]
    assert loaded == [good]
    assert not tmp_folder.exists()  # cleaned by the run that owns the folder
    assert half.exists()  # an incomplete visible folder is reported, never deleted silently

    # an explicit incomplete checkpoint is refused with the way out
    assert main(["train", str(path), "--resume", str(half)]) == 2
    err = capsys.readouterr().err
    assert f"lacks {SAE_CFG_FILENAME}" in err and "--resume` alone" in err


# ---- atomic writes ----------------------------------------------------------------------------
def test_atomic_directory_publishes_whole_folders_only(tmp_path: Path) -> None:
    target = tmp_path / "ckpt" / "100"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert not target.exists() and list((tmp_path / "ckpt").iterdir()) == []

    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not target.exists()  # invisible until complete
    assert (target / "a.txt").read_text() == "one"
    with atomic_directory(target) as tmp:  # replacing an existing folder
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["100"]

    atomic_write_text(tmp_path / "f.json", "{}")
    (tmp_path / ".f.json.tmp-abc").write_text("{")  # what a killed writer leaves
    (tmp_path / ".x.tmp-def").mkdir()
    removed = remove_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".f.json.tmp-abc", ".x.tmp-def"]
    assert (tmp_path / "f.json").read_text() == "{}"


def test_activation_cache_ignores_a_killed_first_shard_write(tmp_path: Path) -> None:
    """A kill during the very first shard leaves only a temporary file: the folder is still a
    new, empty cache (it used to be refused as "not an activation cache")."""
    from msae_plugin.vision.activation_cache import ActivationCache, cache_key

    key = cache_key(model_name="m", pretrained=None, hook_name="blocks.0.hook_resid_post",
                    token_selection="all", image_size=[16, 16], n_ctx=17, tokens_per_image=17,
                    d_in=4, dtype="float32", dataset_path="msae-digits")
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / ".shard_00000.safetensors.tmp-0123456789ab").write_bytes(b"\x00" * 10)
    cache = ActivationCache.open(folder, key)
    assert cache.n_images == 0
    cache.append(torch.ones(17, 4), 1)
    assert ActivationCache.open(folder, key).read_all().shape == (17, 4)
