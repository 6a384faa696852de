"""Data-parallel training on torch.distributed (gloo, two CPU processes) against one process.

The two-process runs go through the real launcher (``torchrun -m msae_plugin train CONFIG``)
or, where one rank must be killed, through torchrun's static rendezvous set by hand (torchrun's
agent would itself tear the other rank down). Checked:

* a 2-process run on a global batch of 8 images (4 per rank) ends with the same SAE weights and
  the same saved feature sparsity as a 1-process run on the same global batches (unshuffled
  buffer, so both see identical batches); the SAE loads with ``SAE.load_from_disk``;
* ``msae cache`` under torchrun fills one sub-cache per rank; read back interleaved, it is the
  one-process run's cache; the 2-process training above reads its batches from it;
* SIGINT to rank 1 alone stops both ranks at the same step with one checkpoint; SIGKILL of
  rank 1 in the resumed run makes rank 0 exit with a clear error (no hang); both ranks resumed
  from the last checkpoint finish with the same SAE as the uninterrupted run;
* a 1-process resume of a 2-process checkpoint is refused; a rank that cannot reach the
  rendezvous gets a clear error after ``MSAE_DIST_TIMEOUT`` seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TOKENS_PER_IMAGE = 65  # msae-tiny-clip, token_selection "all"
GLOBAL_IMAGES = 8
STEPS = 24

pytestmark = pytest.mark.slow


def _config(root: Path, name: str, world: int, *, n_checkpoints: int = 0,
            cache: Path | None = None) -> Path:
    cfg = json.loads((ROOT / "configs" / "vision_msae_tiny.json").read_text())
    cfg["sae"]["d_sae"] = 192
    cfg.update(
        training_tokens=GLOBAL_IMAGES * TOKENS_PER_IMAGE * STEPS,
        train_batch_size_tokens=GLOBAL_IMAGES * TOKENS_PER_IMAGE,
        # each rank's buffer holds exactly its share of one global batch, served unshuffled
        store_batch_size_images=GLOBAL_IMAGES // world,
        n_batches_in_buffer=1,
        activations_mixing_fraction=0.0,
        n_batches_for_norm_estimate=2,
        n_eval_batches=1,
        lr_warm_up_steps=2,
        dead_feature_window=4,
        feature_sampling_window=1000,
        n_checkpoints=n_checkpoints,
        checkpoint_path=str(root / f"{name}_ckpt"),
        output_path=str(root / f"{name}_out"),
        dataset_kwargs={"images_per_epoch": 128},
        use_cached_activations=cache is not None,
        cached_activations_path=str(cache) if cache is not None else None,
    )
    path = root / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _torchrun(config: Path, *args: str, command: str = "train", timeout: float = 240
             ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "msae_plugin", command, str(config), *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_process(config: Path, rank: int, port: int, *args: str, **env: str) -> subprocess.Popen:
    """One rank of a 2-process run with torchrun's environment set by hand."""
    return subprocess.Popen(
        [sys.executable, "-m", "msae_plugin", "train", str(config), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **env),
    )


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "sae_weights.safetensors"))


def _assert_same_sae(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=2e-5, msg=f"{k} differs")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 1-process run (in this process) and a 2-process torchrun run, both with a cache."""
    import msae_plugin
    from msae_plugin.vision.training import VisionSAERunnerConfig, VisionSAETrainingRunner

    msae_plugin.register()
    root = tmp_path_factory.mktemp("dist")
    two = _config(root, "two", 2, cache=root / "cache_two")
    # `msae cache` fills the two ranks' sub-caches; the 2-process training reads them back
    cached = _torchrun(two, command="cache")
    assert cached.returncode == 0, cached.stderr[-3000:]
    proc = _torchrun(two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = _config(root, "one", 1, cache=root / "cache_one")
    torch.manual_seed(0)
    VisionSAETrainingRunner(VisionSAERunnerConfig.from_file(one)).run()
    return {"root": root, "one": root / "one_out", "two": root / "two_out",
            "stdout": proc.stdout, "stderr": proc.stderr, "cache_stdout": cached.stdout}


def test_two_processes_train_the_same_sae_as_one(runs: dict[str, Path]) -> None:
    from sae_lens import SAE

    _assert_same_sae(runs["one"], runs["two"])
    # dead-latent statistics were reduced across ranks: the saved sparsity is the global one
    s1 = load_file(str(runs["one"] / "sparsity.safetensors"))["sparsity"]
    s2 = load_file(str(runs["two"] / "sparsity.safetensors"))["sparsity"]
    torch.testing.assert_close(s2, s1)
    sae = SAE.load_from_disk(str(runs["two"]))
    assert sae.cfg.architecture() == "msae"
    # rank 0 alone reports (one metrics table, one 'saved SAE' line)
    assert runs["stdout"].count("saved SAE") == 1


def test_the_ranks_cache_reads_back_as_the_one_process_stream(runs: dict[str, Path]) -> None:
    from msae_plugin.distributed.cache import read_sharded_cache
    from msae_plugin.vision.activation_cache import ActivationCache

    root = runs["root"]
    index = json.loads((root / "cache_two" / "shards.json").read_text())
    # `msae cache` extracts what training reads: steps + 2 statistics batches + the 1-batch
    # buffer; the 1-process training run wrote the first STEPS + 2 batches of the same stream
    n_images = (STEPS + 2 + 1) * GLOBAL_IMAGES
    assert "rank 0's sub-cache" in runs["cache_stdout"]
    assert index["world_size"] == 2
    assert [r["n_images"] for r in index["ranks"]] == [n_images // 2] * 2
    one = ActivationCache.open(root / "cache_one", {}, create=False).read_all()
    two = read_sharded_cache(root / "cache_two")
    assert two.shape == (n_images * TOKENS_PER_IMAGE, 96)
    assert one.shape == ((n_images - GLOBAL_IMAGES) * TOKENS_PER_IMAGE, 96)
    torch.testing.assert_close(two[: one.shape[0]], one, rtol=1e-5, atol=1e-5)


def _checkpoints(ckpt: Path) -> set[str]:
    return {p.name for p in ckpt.glob("*") if p.is_dir() and p.name.isdigit()}


def _signal_rank_1_at_next_checkpoint(config: Path, ckpt: Path, sig: int, *args: str
                                      ) -> tuple[list[subprocess.Popen], list[str], float]:
    """Run both ranks until a new checkpoint appears, send ``sig`` to rank 1 alone, wait for
    both; return the processes, their stderr and how long rank 0 took to exit after it."""
    before = _checkpoints(ckpt)
    port = _free_port()
    ranks = [_rank_process(config, r, port, *args, MSAE_DIST_TIMEOUT="60") for r in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while not _checkpoints(ckpt) - before:
            if ranks[0].poll() is not None:
                outs = [p.communicate(timeout=60) for p in ranks]
                raise AssertionError(f"rank 0 ended before a new checkpoint: {outs}")
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        ranks[1].send_signal(sig)
        t0 = time.monotonic()
        outs = [p.communicate(timeout=90) for p in ranks]
        waited = time.monotonic() - t0
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
    return ranks, [o[0] + o[1] for o in outs], waited


def test_interrupt_kill_and_resume_of_a_two_process_run(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    # a fresh cache: both ranks write their sub-caches through the interruptions
    config = _config(tmp_path, "two", 2, n_checkpoints=5, cache=tmp_path / "cache")
    ckpt = tmp_path / "two_ckpt"
    total = STEPS * GLOBAL_IMAGES * TOKENS_PER_IMAGE

    # 1. Ctrl-C reaching one rank only: both stop at the same step, one checkpoint, status 130
    ranks, outs, _ = _signal_rank_1_at_next_checkpoint(config, ckpt, signal.SIGINT)
    assert [p.returncode for p in ranks] == [130, 130], outs
    assert "interrupted; checkpoint saved to" in outs[0] and "--resume" in outs[0]
    interrupted = max(int(n) for n in _checkpoints(ckpt))
    assert 0 < interrupted < total

    # 2. SIGKILL of rank 1 in the resumed run: rank 0 exits with a clear error, no hang
    ranks, outs, waited = _signal_rank_1_at_next_checkpoint(config, ckpt, signal.SIGKILL,
                                                            "--resume")
    assert ranks[0].returncode == 2, outs[0][-2000:]
    assert "error: rank 0: another rank stopped answering" in outs[0], outs[0][-2000:]
    assert "--resume" in outs[0]
    assert waited < 30  # a dead peer is noticed at once, not after the 60 s timeout
    assert not (tmp_path / "two_out" / "sae_weights.safetensors").exists()
    newest = max(int(n) for n in _checkpoints(ckpt))
    assert newest > interrupted  # the resumed run went on from the interrupted checkpoint

    # the checkpoint records its world size: one process cannot resume it
    from msae_plugin.errors import DistributedError
    from msae_plugin.vision.training import VisionSAERunnerConfig, VisionSAETrainingRunner

    one = json.loads(config.read_text()) | {"use_cached_activations": False}
    (tmp_path / "one.json").write_text(json.dumps(one))
    with pytest.raises(DistributedError, match=r"2-process run.*torchrun --nproc-per-node 2"):
        VisionSAETrainingRunner(VisionSAERunnerConfig.from_file(tmp_path / "one.json"),
                                resume_from_checkpoint="auto")

    # 3. resumed under torchrun to the end: the SAE of the uninterrupted run
    proc = _torchrun(config, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0's progress bar (the only one) starts at the checkpoint's sample count
    assert proc.stderr.count(f"| {newest}/{total} ") >= 1
    _assert_same_sae(runs["two"], tmp_path / "two_out")


def test_a_rank_that_cannot_reach_the_rendezvous_gets_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch.distributed as dist

    from msae_plugin.distributed.context import init_from_env
    from msae_plugin.errors import DistributedError

    # rank 1 alone: nobody serves the rendezvous at this port
    port = _free_port()
    for k, v in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port), "MSAE_DIST_TIMEOUT": "2"}.items():
        monkeypatch.setenv(k, v)
    t0 = time.monotonic()
    with pytest.raises(DistributedError, match=rf"rank 1 of 2 could not reach the rendezvous at "
                       rf"127.0.0.1:{port} within 2 s.*MSAE_DIST_TIMEOUT"):
        init_from_env("cpu")
    assert time.monotonic() - t0 < 30
    assert not dist.is_initialized()
