"""Launcher for tests/test_distributed_language_model.py: SAELens LM configs under torchrun.

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_lm_launch.py ROOT``
trains every run of :data:`RUNS` with
:func:`msae_plugin.distributed.language_model.train_language_model`, one after the other in the
same process group, writing ``ROOT/<name>_out``. The test imports the builders below to train
the one-process references in its own process, so both sides build the same tiny model, data
and configs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

if os.environ.get("RANK", "0") != "0":
    os.environ.setdefault("TQDM_DISABLE", "1")  # one progress bar per launch (tqdm reads it at import)

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig  # noqa: E402
from sae_lens.saes.standard_sae import StandardTrainingSAEConfig  # noqa: E402
from sae_lens.saes.topk_sae import TopKTrainingSAEConfig  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

CONTEXT = 8  # tokens per pretokenized row = per sequence
GLOBAL_SEQS = 4  # sequences per global batch: 2 whole sequences per rank on 2 ranks
STEPS = 24
N_ROWS = 64  # 96 sequences are read: the run wraps into a second epoch
D_IN, D_SAE = 16, 48
HOOK = "blocks.0.hook_resid_post"
SEED = 7

#: name -> (architecture, whether the data comes from cfg.dataset_path rather than an override)
RUNS: dict[str, tuple[str, bool]] = {
    "topk": ("topk", False),
    "standard_path": ("standard", True),
    "msae": ("msae", False),
}


def build_model() -> HookedTransformer:
    """A 1-layer transformer with fixed random weights (the same in every process)."""
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=D_IN, n_ctx=16, d_head=4, n_heads=4, d_mlp=32, d_vocab=50,
        act_fn="gelu", normalization_type="LN", device="cpu",
    )
    return HookedTransformer(cfg)


def build_dataset() -> Dataset:
    """``N_ROWS`` pretokenized sequences of ``CONTEXT`` tokens (``input_ids``, as SAELens's
    pretokenize runner writes them)."""
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(1, 50, (N_ROWS, CONTEXT), generator=g)
    return Dataset.from_dict({"input_ids": rows.tolist()})


def write_dataset_dir(root: Path) -> Path:
    """The same rows as a local parquet dataset that ``load_dataset(path)`` reads offline."""
    folder = root / "tokens_ds"
    if not (folder / "train.parquet").exists():
        folder.mkdir(parents=True, exist_ok=True)
        build_dataset().to_parquet(str(folder / "train.parquet"))
    return folder


def sae_config(arch: str) -> Any:
    if arch == "topk":
        return TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4)
    if arch == "standard":
        return StandardTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, l1_coefficient=1.0)
    if arch == "msae":
        from msae_plugin.msae.config import MSAETrainingSAEConfig

        return MSAETrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k_start=4)
    raise ValueError(arch)


def build_config(root: Path, name: str, tag: str) -> LanguageModelSAERunnerConfig[Any]:
    """Run ``name``'s config; ``tag`` separates the outputs of the two sides."""
    arch, from_path = RUNS[name]
    return LanguageModelSAERunnerConfig(
        sae=sae_config(arch),
        model_name="tiny-test-model",
        hook_name=HOOK,
        dataset_path=str(write_dataset_dir(root)) if from_path else "",
        streaming=True,
        is_dataset_tokenized=True,
        context_size=CONTEXT,
        train_batch_size_tokens=GLOBAL_SEQS * CONTEXT,
        training_tokens=STEPS * GLOBAL_SEQS * CONTEXT,
        # unshuffled store: both sides see the same global batches in order
        activations_mixing_fraction=0.0,
        store_batch_size_prompts=2,
        n_batches_in_buffer=4,
        lr=3e-3,
        dead_feature_window=5,
        feature_sampling_window=1000,
        n_eval_batches=1,
        device="cpu",
        seed=SEED,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=str(root / f"{name}_{tag}_ckpt"),
        output_path=str(root / f"{name}_{tag}_out"),
        verbose=False,
    )


def checkpointed_config(root: Path, tag: str, resume: Path | None = None
                        ) -> LanguageModelSAERunnerConfig[Any]:
    """The ``topk`` run with one checkpoint (after step 13 of 24), or resumed from it.

    The per-rank buffer is one local batch (``n_batches_in_buffer * CONTEXT`` = 16 tokens), so no
    activations sit unserved in it at the checkpoint and a resumed run reads on where the
    uninterrupted one did."""
    cfg = build_config(root, "topk", tag)
    cfg.n_batches_in_buffer = 2
    cfg.n_checkpoints = 1
    cfg.checkpoint_path = str(root / "topk_ckpt_ckpt")  # the same folder for both runs
    cfg.resume_from_checkpoint = None if resume is None else str(resume)
    return cfg


def main(root: Path) -> None:
    import msae_plugin
    from msae_plugin.distributed.context import init_from_env, shutdown
    from msae_plugin.distributed.language_model import train_language_model

    msae_plugin.register()
    ctx = init_from_env("cpu")
    tag = f"w{ctx.world_size}"
    try:
        for name, (_, from_path) in RUNS.items():
            train_language_model(
                build_config(root, name, tag),
                override_dataset=None if from_path else build_dataset(),
                override_model=build_model(),
                dist_ctx=ctx,
            )
        train_language_model(checkpointed_config(root, f"{tag}_full"),
                             override_dataset=build_dataset(), override_model=build_model(),
                             dist_ctx=ctx)
        # rank 0 wrote <checkpoint_path>/<n_training_samples> (the path was set after
        # __post_init__, so without SAELens's random suffix)
        (ckpt,) = (root / "topk_ckpt_ckpt").glob("*")
        train_language_model(checkpointed_config(root, f"{tag}_resumed", resume=ckpt),
                             override_dataset=build_dataset(), override_model=build_model(),
                             dist_ctx=ctx)
    finally:
        shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
