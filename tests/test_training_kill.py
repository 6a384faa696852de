"""SIGKILL a vision training run at many points *inside* a checkpoint write; every resume works.

A checkpoint write is a sequence of file operations (SAELens's weights, ``cfg.json``,
``sparsity.safetensors``, ``trainer_state.pt``, ``activation_scaler.json``, our provider state and
``runner_cfg.json``, then the fsyncs and renames that publish the folder). The child process
counts those operations during one checkpoint and kills itself with SIGKILL (no handler, no
cleanup: the same as ``kill -9`` or the OOM killer) right before or after operation ``i``, for
``i`` spread over the whole write. After every kill:

* every visible folder under ``checkpoint_path`` is a complete, loadable checkpoint
  (``validate_training_checkpoint``), checked file by file;
* ``resume_from_checkpoint="auto"`` picks the newest of them (or starts afresh when the kill hit
  the first checkpoint) and the run finishes with the full token count and a saved SAE;
* no temporary folder is left behind after the resumed run.

Starting a Python process that imports torch, SAELens and open_clip takes seconds on the shared
test machine, so one helper process imports them once and ``fork``s a fresh child per scenario
(it never computes anything itself, so no thread pool is forked mid-use).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

BATCH = 68  # 4 images of 17 tokens
TOTAL = BATCH * 12
N_CHECKPOINTS = 3  # thresholds every 4 steps: checkpoints after steps 5, 9, 13 (never: 12 steps)
N_KILLS = 12


# ---------------------------------------------------------------------------- the child side
def _config(root: Path) -> Any:
    from msae_plugin.vision.training import VisionSAERunnerConfig

    return VisionSAERunnerConfig.from_dict({
        "sae": {"architecture": "msae", "d_in": 32, "d_sae": 64, "k_start": 4},
        "model_name": "tiny-test",
        "hook_name": "blocks.0.hook_resid_post",
        "dataset_kwargs": {"images_per_epoch": 256},
        "training_tokens": TOTAL,
        "train_batch_size_tokens": BATCH,
        "store_batch_size_images": 4,
        "n_batches_in_buffer": 2,
        "n_batches_for_norm_estimate": 2,
        "n_eval_batches": 1,
        "n_checkpoints": N_CHECKPOINTS,
        "checkpoint_path": str(root / "ckpt"),
        "output_path": str(root / "out"),
        "seed": 0,
        "verbose": False,
    })


def _tiny_model() -> Any:
    from helpers import tiny_clip

    from msae_plugin.vision.hooked_clip import HookedOpenCLIP

    return HookedOpenCLIP(tiny_clip(), model_name="tiny-test").eval()


def _instrument(checkpoint_no: int, kill_at: int, counter_file: Path) -> None:
    """Count the file operations of checkpoint number ``checkpoint_no`` (1-based); SIGKILL this
    process at count ``kill_at`` (0: never; the count is written to ``counter_file``)."""
    import json as json_module

    import sae_lens.training.sae_trainer as sae_trainer
    import torch
    from sae_lens.training.activation_scaler import ActivationScaler

    import msae_plugin.msae.checkpoint as msae_ckpt
    from msae_plugin.vision.activations import ImageActivationProvider
    from msae_plugin.vision.training_checkpoints import VisionSAETrainer

    state = {"ckpt": 0, "ops": 0, "inside": False}

    def tick() -> None:
        if state["inside"] and state["ckpt"] == checkpoint_no:
            state["ops"] += 1
            if state["ops"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    def counted(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tick()
            out = fn(*args, **kwargs)
            tick()
            return out

        return wrapper

    for owner, name in [
        (msae_ckpt, "save_file"), (sae_trainer, "save_file"), (torch, "save"),
        (json_module, "dump"), (os, "replace"),
        (ActivationScaler, "save"), (ImageActivationProvider, "save_to_checkpoint"),
    ]:
        setattr(owner, name, counted(getattr(owner, name)))
    # fsync still counts as a kill point, but skips the disk flush: a killed process loses
    # nothing from the page cache, and hundreds of real flushes would dominate the test's time
    os.fsync = counted(lambda fd: None)
    if os.environ.get("MSAE_KILL_TEST_IN_PLACE"):  # the pre-fix behaviour, to see the test fail
        VisionSAETrainer.save_checkpoint = sae_trainer.SAETrainer.save_checkpoint  # type: ignore
    original = VisionSAETrainer.save_checkpoint

    def save_checkpoint(self: Any, *args: Any, **kwargs: Any) -> None:
        state["ckpt"] += 1
        state["inside"] = True
        try:
            original(self, *args, **kwargs)
        finally:
            state["inside"] = False
            if state["ckpt"] == checkpoint_no:
                counter_file.write_text(str(state["ops"]))

    VisionSAETrainer.save_checkpoint = save_checkpoint  # type: ignore[method-assign]


def _victim(root: Path, checkpoint_no: int, kill_at: int) -> None:
    from msae_plugin.vision.training import VisionSAETrainingRunner

    _instrument(checkpoint_no, kill_at, root / "ops.txt")
    VisionSAETrainingRunner(_config(root), override_model=_tiny_model()).run()


def _resume(root: Path) -> dict[str, Any]:
    """Check the folder a kill left, then resume and finish; return what was seen."""
    from msae_plugin.atomic_io import is_temporary
    from msae_plugin.errors import CheckpointError
    from msae_plugin.vision.training import VisionSAETrainingRunner
    from msae_plugin.vision.training_checkpoints import validate_training_checkpoint

    ckpt_root = root / "ckpt"
    visible = sorted(p for p in ckpt_root.iterdir() if not is_temporary(p))
    bad = {}
    for path in visible:
        try:
            validate_training_checkpoint(path)
        except CheckpointError as exc:
            bad[path.name] = str(exc)
    newest = max(visible, key=lambda p: int(p.name), default=None)
    runner = VisionSAETrainingRunner(
        _config(root), override_model=_tiny_model(), resume_from_checkpoint="auto"
    )
    picked = runner.cfg.resume_from_checkpoint
    runner.run()
    assert runner.trainer is not None
    return {
        "visible": [p.name for p in visible],
        "bad": bad,
        "picked": None if picked is None else Path(picked).name,
        "newest": None if newest is None else newest.name,
        "finished_samples": runner.trainer.n_training_samples,
        "saved": (root / "out" / "cfg.json").is_file(),
        "temporaries_after": [p.name for p in ckpt_root.iterdir() if is_temporary(p)],
    }


def _fork(fn: Any, *args: Any) -> int:
    """Run ``fn(*args)`` in a forked child; its exit status (negative: killed by that signal)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            fn(*args)
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported through the exit code
            print(f"child failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def helper_main(workdir: Path) -> None:
    """The helper process: probe one checkpoint's operation count, then kill and resume."""
    import torch

    torch.set_num_threads(1)
    import msae_plugin
    import msae_plugin.vision.training  # noqa: F401 - import once, before forking

    msae_plugin.register()
    # load once what every child would otherwise load again (sklearn's digits, textures)
    from msae_plugin.embedded import dataset

    dataset._digits()
    dataset._texture_bank()
    probe = workdir / "probe"
    probe.mkdir()
    assert _fork(_victim, probe, 2, 0) == 0, "the probe run failed"
    n_ops = int((probe / "ops.txt").read_text())
    # kill points spread over the whole write, first and last operation included; every third
    # scenario kills the *first* checkpoint (nothing complete yet: the resume starts afresh)
    points = sorted({1 + round(i * (n_ops - 1) / (N_KILLS - 1)) for i in range(N_KILLS)})
    results = []
    for i, kill_at in enumerate(points):
        root = workdir / f"kill{i}"
        root.mkdir()
        checkpoint_no = 1 if i % 3 == 0 else 2
        t0 = time.perf_counter()
        status = _fork(_victim, root, checkpoint_no, kill_at)
        t1 = time.perf_counter()
        out = root / "resume.json"
        resume_status = _fork(lambda r=root, o=out: o.write_text(json.dumps(_resume(r))))
        print(f"scenario {i}: victim {t1 - t0:.1f}s, resume {time.perf_counter() - t1:.1f}s",
              file=sys.stderr, flush=True)
        results.append({
            "kill_at": kill_at, "checkpoint_no": checkpoint_no, "status": status,
            "resume_status": resume_status,
            "resume": json.loads(out.read_text()) if out.is_file() else None,
        })
    print(json.dumps({"n_ops": n_ops, "results": results}))


# ---------------------------------------------------------------------------- the test
@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_during_checkpoint_writes_then_resume(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["n_ops"] >= 10  # the write really is many operations
    results = report["results"]
    assert len(results) >= 10
    for r in results:
        where = f"killed at operation {r['kill_at']}/{report['n_ops']} of checkpoint " \
                f"{r['checkpoint_no']}"
        assert r["status"] == -signal.SIGKILL, where  # it really was killed there
        assert r["resume_status"] == 0, f"{where}: resume failed\n{proc.stderr[-4000:]}"
        seen = r["resume"]
        assert seen["bad"] == {}, f"{where}: incomplete checkpoint folders {seen['bad']}"
        assert seen["picked"] == seen["newest"], where  # the newest complete one, or None
        if r["checkpoint_no"] == 2:  # the first checkpoint was complete before the kill
            assert seen["picked"] is not None, where
        assert seen["finished_samples"] == TOTAL and seen["saved"], where
        assert seen["temporaries_after"] == [], where


if __name__ == "__main__":  # pragma: no cover - the helper process of the test above
    helper_main(Path(sys.argv[1]))
