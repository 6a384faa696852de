"""SAELens's own ``LanguageModelSAERunnerConfig`` trained on 2 processes (gloo) against 1 process.

One ``torchrun`` launch (``tests/dist_lm_launch.py``) trains three tiny SAEs with
:func:`~msae_plugin.distributed.language_model.train_language_model` on a 1-layer
``HookedTransformer``: ``topk`` and ``msae`` on an in-memory pretokenized ``Dataset``
(``override_dataset``), ``standard`` on a local parquet dataset named by ``cfg.dataset_path``
and streamed (the ``IterableDataset`` share). The references are SAELens's own
``LanguageModelSAETrainingRunner(cfg).run()`` in this process, after ``torch.manual_seed(cfg.seed)``,
on the same config. The store is unshuffled (``activations_mixing_fraction=0``) and each rank's
batch is 2 whole sequences, so the ranks' ``t``-th batches together are the 1-process ``t``-th
batch (rows in another order): the SAEs must agree to float rounding, and they would not with
gradients left un-averaged (each rank would follow its own half-batch gradient) or with the
ranks reading the same data. The 2-process run also wraps into a second epoch of the data.
The same launch checkpoints a 2-process run and resumes it: it must end with the uninterrupted
SAE, bit for bit (each rank restores its own dataset position).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dist_lm_launch as launch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _reference(root: Path, name: str) -> Path:
    """SAELens's own runner, one process: what a user runs without torchrun."""
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner

    _, from_path = launch.RUNS[name]
    cfg = launch.build_config(root, name, "ref")
    dataset = None if from_path else launch.build_dataset()
    model = launch.build_model()
    torch.manual_seed(cfg.seed)
    LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model).run()
    assert cfg.output_path is not None
    return Path(cfg.output_path)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Tiny tensors: torch's thread pool only costs here (40x slower steps on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (2-process output, 1-process SAELens output)."""
    root = tmp_path_factory.mktemp("dist_lm")
    launch.write_dataset_dir(root)
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(ROOT / "tests" / "dist_lm_launch.py"), str(root)],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        # the references train here while the two ranks run
        refs = {name: _reference(root, name) for name in launch.RUNS}
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-4000:]
    return {name: (root / f"{name}_w2_out", refs[name]) for name in launch.RUNS}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5, msg=f"{what}: {k} differs")


@pytest.mark.parametrize("name", list(launch.RUNS))
def test_two_processes_train_the_one_process_sae(runs: dict[str, tuple[Path, Path]],
                                                 name: str) -> None:
    two, one = runs[name]
    w2, w1 = (load_file(str(p / "sae_weights.safetensors")) for p in (two, one))
    _assert_same(w2, w1, f"{name} weights")
    # it trained: the weights moved well away from the seeded initialisation
    assert (w1["W_enc"] - _initial_w_enc(name)).abs().max() > 1e-2
    s2, s1 = (load_file(str(p / "sparsity.safetensors"))["sparsity"] for p in (two, one))
    torch.testing.assert_close(s2, s1, rtol=1e-4, atol=1e-4)  # dead-latent stats reduced


def _initial_w_enc(name: str) -> torch.Tensor:
    from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig

    arch, _ = launch.RUNS[name]
    torch.manual_seed(launch.SEED)
    sae: Any = TrainingSAE.from_dict(
        TrainingSAEConfig.from_dict(launch.sae_config(arch).to_dict()).to_dict())
    return sae.W_enc.detach().clone()


def test_saved_sae_loads_and_records_the_global_config(runs: dict[str, tuple[Path, Path]]
                                                       ) -> None:
    from sae_lens import SAE

    for two, one in runs.values():
        sae = SAE.load_from_disk(str(two))
        ref = SAE.load_from_disk(str(one))
        x = torch.randn(8, launch.D_IN)
        torch.testing.assert_close(sae.decode(sae.encode(x)), ref.decode(ref.encode(x)),
                                   rtol=1e-4, atol=1e-4)
        assert sae.cfg.metadata.hook_name == launch.HOOK
        runner_cfg = json.loads((two / "runner_cfg.json").read_text())
        # the global batch, not a rank's share, is what a re-run of this config needs
        assert runner_cfg["train_batch_size_tokens"] == launch.GLOBAL_SEQS * launch.CONTEXT
        assert runner_cfg["device"] == "cpu"


def test_two_process_resume_continues_the_run(runs: dict[str, tuple[Path, Path]]) -> None:
    """A 2-process run resumed from its step-13 checkpoint ends with the uninterrupted SAE."""
    root = runs["topk"][0].parent
    (ckpt,) = (root / "topk_ckpt_ckpt").glob("416")  # 13 steps of 32 tokens
    assert json.loads((ckpt / "distributed.json").read_text())["world_size"] == 2
    positions = [int(load_file(str(ckpt / f"activations_store_state_rank{r}.safetensors"))
                     ["n_dataset_processed"]) for r in range(2)]
    assert positions[0] > 0 and positions[0] == positions[1]  # both ranks read 2 rows a step
    full = load_file(str(root / "topk_w2_full_out" / "sae_weights.safetensors"))
    resumed = load_file(str(root / "topk_w2_resumed_out" / "sae_weights.safetensors"))
    at_ckpt = load_file(str(ckpt / "sae_weights.safetensors"))
    assert (full["W_enc"] - at_ckpt["W_enc"]).abs().max() > 1e-3  # trained on after it
    for k in full:
        assert torch.equal(resumed[k], full[k]), k


def test_resume_with_another_world_size_is_refused(tmp_path: Path) -> None:
    from msae_plugin.distributed.context import DistContext
    from msae_plugin.distributed.language_model import train_language_model
    from msae_plugin.errors import DistributedError

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "distributed.json").write_text(json.dumps({"world_size": 2}))
    cfg = launch.build_config(tmp_path, "topk", "w1")
    cfg.resume_from_checkpoint = str(ckpt)
    with pytest.raises(DistributedError, match="nproc-per-node 2"):
        train_language_model(cfg, override_dataset=launch.build_dataset(),
                             override_model=launch.build_model(), dist_ctx=DistContext())


def test_one_process_path_is_saelens_runner(tmp_path: Path) -> None:
    """Without torchrun the function is SAELens's runner after seeding: bit-for-bit equal."""
    from msae_plugin.distributed.context import DistContext
    from msae_plugin.distributed.language_model import train_language_model

    cfg = launch.build_config(tmp_path, "topk", "w1")
    cfg.training_tokens = 6 * launch.GLOBAL_SEQS * launch.CONTEXT
    train_language_model(cfg, override_dataset=launch.build_dataset(),
                         override_model=launch.build_model(), dist_ctx=DistContext())
    ref = launch.build_config(tmp_path, "topk", "ref")
    ref.training_tokens = cfg.training_tokens
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner

    dataset, model = launch.build_dataset(), launch.build_model()
    torch.manual_seed(ref.seed)
    LanguageModelSAETrainingRunner(ref, override_dataset=dataset, override_model=model).run()
    a = load_file(str(Path(str(cfg.output_path)) / "sae_weights.safetensors"))
    b = load_file(str(Path(str(ref.output_path)) / "sae_weights.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_indivisible_global_batch_is_refused() -> None:
    from msae_plugin.distributed.context import DistContext
    from msae_plugin.distributed.language_model import _per_rank_config
    from msae_plugin.errors import DistributedError

    cfg = launch.build_config(Path("/nonexistent"), "topk", "x")
    cfg.train_batch_size_tokens = 33
    with pytest.raises(DistributedError, match="multiple of 2"):
        _per_rank_config(cfg, DistContext(rank=0, world_size=2))
