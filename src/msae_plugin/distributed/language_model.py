"""SAELens's own language-model training runner, data-parallel under ``torchrun``.

:func:`train_language_model` takes an unchanged ``sae_lens.LanguageModelSAERunnerConfig`` and
trains it on every process of a ``torchrun`` launch. It composes SAELens's
``LanguageModelSAETrainingRunner`` instead of re-implementing it: the runner loads the model,
builds the ``ActivationsStore``, the SAE and the evaluator exactly as it would for
``runner.run()``; only the trainer is swapped for
:class:`~msae_plugin.distributed.trainer.DataParallelSAETrainer` (gradients averaged inside
``backward()``, dead-latent statistics reduced, global sample counts, rank 0 writes), and each
rank's runner is built on a per-rank copy of the config fed with this rank's share of the data.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) it is exactly
``torch.manual_seed(cfg.seed); LanguageModelSAETrainingRunner(cfg, ...).run()`` (SAELens's
runner does not seed by itself; the seed is what makes the ranks of a multi-rank run start from
the same SAE, and a one-process run the same one), after refusing to resume a multi-rank
checkpoint: nothing of this module is in the way of a plain run.

Global and per-rank settings
----------------------------
The config keeps its one-process meaning; a run on ``W`` ranks takes the same optimiser steps
on the same global batches. What is **global** (the trainer gets ``cfg.to_sae_trainer_config()``
of the *original* config, and SAELens counts these in global samples or steps):

* ``train_batch_size_tokens`` (each rank feeds ``train_batch_size_tokens / W`` rows per step;
  it must divide, else :class:`~msae_plugin.errors.DistributedError`), ``training_tokens``;
* the LR schedule (``lr_warm_up_steps``, ``lr_decay_steps``, ...), ``n_checkpoints``,
  ``feature_sampling_window`` and ``dead_feature_window`` (in steps; the dead-latent counters are
  reduced over ranks so a latent is alive when it fired on any rank);
* ``n_batches_for_norm_estimate`` (each rank draws that many local batches and the mean norm is
  reduced: as many rows as one process would use), ``seed`` (the same on every rank, so the
  SAE starts identical; rank 0's initial weights are also broadcast to make sure),
  ``checkpoint_path`` (rank 0's, whose ``__post_init__`` suffix is random per process, is
  broadcast), ``output_path`` and ``logger`` (rank 0 only writes and logs to wandb).

What is **per rank** (each rank's ``ActivationsStore`` is built from its per-rank config copy):

* the data: rank ``r`` reads rows ``r, r + W, r + 2W, ...`` of the dataset (a
  ``datasets.Dataset`` is ``shard(num_shards=W, index=r, contiguous=False)``; a streamed
  ``IterableDataset`` is filtered by row index, so every rank reads the stream and keeps its
  share). Strided rather than contiguous so that, when a rank's batch is whole sequences and
  rows are pretokenized sequences, the ranks' ``t``-th batches together hold exactly the
  sequences of the one-process ``t``-th batch;
* ``store_batch_size_prompts`` (this rank's LLM forward batch), ``n_batches_in_buffer`` (this
  rank's mixing buffer, ``n_batches_in_buffer * context_size`` tokens; it must hold at least one
  *local* batch), ``activations_mixing_fraction`` (each rank shuffles its own buffer; with 0 the
  store serves its rows in order, which is what makes a W-rank run equal a one-process run to
  float rounding), ``prefetch_llm_batches``;
* ``context_size``, ``seqpos_slice``, ``exclude_special_tokens``, ``prepend_bos``: per sequence,
  so identical on every rank; note that ``exclude_special_tokens`` or unaligned batches (local
  batch not a whole number of sequences, or unpretokenized text concatenated on the fly) make
  the ranks' batches a different partition of the data than the one-process batches;
* ``device`` / ``llm_device`` / ``act_store_device`` ``"cuda"`` mean this rank's GPU
  (``cuda:LOCAL_RANK``);
* the evaluator (``n_eval_batches``, ``eval_batch_size_prompts``) runs on rank 0 only, on rank
  0's store. As in SAELens it draws its batches from the training stream, so with wandb
  evaluations on, rank 0's data position moves ahead of the others (the run stays valid; it is
  then no longer bit-for-bit the one-process run).

MSAE fits its input statistics on its first training batch; on ``W`` ranks that batch is
gathered from all ranks first, so every rank fits the one-process statistics.

Checkpoints and resuming: rank 0 writes SAELens's checkpoint (weights, trainer state, its own
``activations_store_state.safetensors``, the global runner config) plus every rank's dataset
position (``activations_store_state_rank{r}.safetensors``) and ``distributed.json``
(the world size). ``resume_from_checkpoint`` on ``W`` ranks restores each rank's position;
resuming with another world size is refused, since the shares would differ. In a multi-rank run
SAELens's SIGINT/SIGTERM handler is not installed (a half-collective save on an interrupted
rank would hang the others): resume from the last periodic checkpoint.

Progress bars: SAELens's ``tqdm`` bars are created on every rank; set ``TQDM_DISABLE=1`` on ranks
other than 0 before importing SAELens (``tests/dist_lm_launch.py`` does) for one bar per launch.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import wandb
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, load_dataset
from sae_lens import logger as sae_lens_logger
from sae_lens.config import HfDataset, LanguageModelSAERunnerConfig
from sae_lens.constants import ACTIVATIONS_STORE_STATE_FILENAME
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.activations_store import validate_pretokenized_dataset_tokenizer
from sae_lens.training.prefetch import PrefetchingIterator
from sae_lens.training.types import DataProvider
from safetensors.torch import save_file
from transformer_lens.HookedTransformer import HookedRootModule

from msae_plugin.distributed.checkpoint import check_world_size, write_world_size
from msae_plugin.distributed.collectives import broadcast_object, gather_rows
from msae_plugin.distributed.context import DistContext, guarded, init_from_env
from msae_plugin.distributed.trainer import DataParallelSAETrainer
from msae_plugin.errors import DistributedError


def rank_store_filename(rank: int) -> str:
    """Rank ``rank``'s activations-store state in a multi-rank checkpoint."""
    stem = ACTIVATIONS_STORE_STATE_FILENAME.removesuffix(".safetensors")
    return f"{stem}_rank{rank}.safetensors"


def local_batch_tokens(global_tokens: int, world_size: int) -> int:
    """This rank's share of ``train_batch_size_tokens``; refuses a share that would not be equal
    (unequal shares would weight the ranks' mean losses wrongly when gradients are averaged)."""
    if global_tokens % world_size:
        lower = global_tokens - global_tokens % world_size
        raise DistributedError(
            f"train_batch_size_tokens={global_tokens} cannot be split evenly over {world_size} "
            f"ranks; set it to a multiple of {world_size} (e.g. {lower or world_size} or "
            f"{lower + world_size}), or launch a number of processes that divides it"
        )
    return global_tokens // world_size


def shard_dataset(dataset: HfDataset, ctx: DistContext) -> Dataset | IterableDataset:
    """Rows ``rank, rank + W, rank + 2W, ...`` of ``dataset`` (see the module docstring)."""
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        raise DistributedError(
            "the dataset is a dict of splits; pass one split (e.g. dataset['train']) as "
            "override_dataset"
        )
    if isinstance(dataset, Dataset):
        share = dataset.shard(num_shards=ctx.world_size, index=ctx.rank, contiguous=False)
        if len(share) == 0:
            raise DistributedError(
                f"rank {ctx.rank} of {ctx.world_size} gets no rows of a {len(dataset)}-row "
                "dataset; use a larger dataset or fewer processes"
            )
        return share
    w, r = ctx.world_size, ctx.rank
    # not IterableDataset.shard: that splits by the stream's files, not strided by row
    return dataset.filter(lambda _row, i: i % w == r, with_indices=True)


def load_dataset_like_saelens(cfg: LanguageModelSAERunnerConfig[Any]) -> HfDataset:
    """``cfg.dataset_path`` loaded with the arguments SAELens's ``ActivationsStore`` uses."""
    return load_dataset(
        cfg.dataset_path,
        split="train",
        streaming=cfg.streaming,
        trust_remote_code=cfg.dataset_trust_remote_code,
    )


class LanguageModelDataParallelTrainer(DataParallelSAETrainer):
    """:class:`DataParallelSAETrainer` plus what the LM runner's pieces need on several ranks:
    MSAE's first-batch input statistics over all ranks, and every rank's dataset position in
    rank 0's checkpoints."""

    def __init__(self, *args: Any, activations_store: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.activations_store = activations_store
        self.store_positions: list[int] = []

    def _train_step(self, sae: Any, sae_in: torch.Tensor) -> Any:
        fit = getattr(sae, "fit_input_statistics", None)
        if self.dist_ctx.active and fit is not None and not bool(sae.input_stats_fitted):
            # one process fits on its first (global) batch: fit on the same rows on every rank
            fit(gather_rows(sae_in, self.dist_ctx, "gathering the first batch for MSAE "
                                                   "input statistics"))
        return super()._train_step(sae, sae_in)

    def save_checkpoint(self, checkpoint_name: str, base_path: Path | str | None = None,
                        wandb_aliases: list[str] | None = None) -> None:
        if self.dist_ctx.active:
            # every rank takes part; rank 0's save_checkpoint_fn writes the positions
            mine = int(self.activations_store.n_dataset_processed)
            box: list[Any] = [None] * self.dist_ctx.world_size
            guarded(dist.all_gather_object, "gathering dataset positions for a checkpoint",
                    box, mine)
            self.store_positions = [int(x) for x in box]
        super().save_checkpoint(checkpoint_name, base_path, wandb_aliases)


@contextmanager
def _quiet_override_warning() -> Iterator[None]:
    """The runner warns that an override dataset makes the run irreproducible from the config;
    a share we cut from the config's own dataset does not, so that warning would mislead."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not record.getMessage().startswith("You just passed in a dataset")

    drop = _Drop()
    sae_lens_logger.addFilter(drop)
    try:
        yield
    finally:
        sae_lens_logger.removeFilter(drop)


def _per_rank_config(cfg: LanguageModelSAERunnerConfig[Any], ctx: DistContext
                     ) -> LanguageModelSAERunnerConfig[Any]:
    """A copy whose store and devices are this rank's (see the module docstring).

    Copied and edited rather than ``dataclasses.replace``d: ``__post_init__`` would run again
    and append a second random suffix to ``checkpoint_path``."""
    local = copy.deepcopy(cfg)
    local.train_batch_size_tokens = local_batch_tokens(cfg.train_batch_size_tokens,
                                                       ctx.world_size)
    local.training_tokens = cfg.training_tokens // ctx.world_size  # the store's size hint only
    for name in ("device", "llm_device", "act_store_device"):
        value = getattr(local, name)
        if isinstance(value, str):
            setattr(local, name, ctx.device_for(value))
    if not ctx.is_main:
        local.logger.log_to_wandb = False
    buffer_tokens = local.n_batches_in_buffer * len(range(cfg.context_size)[slice(*cfg.seqpos_slice)])
    if buffer_tokens < local.train_batch_size_tokens:
        raise DistributedError(
            f"n_batches_in_buffer={cfg.n_batches_in_buffer} gives a per-rank buffer of "
            f"{buffer_tokens} tokens, less than one local batch "
            f"({local.train_batch_size_tokens} tokens); raise n_batches_in_buffer"
        )
    return local


def _broadcast_sae(sae: TrainingSAE[Any], ctx: DistContext) -> None:
    """Rank 0's SAE on every rank: the seed already makes them equal; this makes sure (an
    override model or ``from_pretrained_path`` could still differ between processes)."""
    with torch.no_grad():
        for tensor in sae.state_dict().values():
            guarded(dist.broadcast, "broadcasting the initial SAE", tensor, src=0)


def _resume(trainer: LanguageModelDataParallelTrainer, runner: LanguageModelSAETrainingRunner,
            path: str, ctx: DistContext) -> None:
    """What ``runner.run()`` restores, with this rank's own dataset position."""
    ckpt = Path(path)
    trainer.load_trainer_state(ckpt)
    runner.sae.load_weights_from_checkpoint(ckpt)
    store = runner.activations_store
    store.load(str(ckpt / rank_store_filename(ctx.rank)))


def train_language_model(
    cfg: LanguageModelSAERunnerConfig[Any],
    *,
    override_dataset: HfDataset | None = None,
    override_model: HookedRootModule | None = None,
    dist_ctx: DistContext | None = None,
) -> TrainingSAE[Any]:
    """Train ``cfg`` with SAELens's LM runner, data-parallel when launched by ``torchrun``.

    ``dist_ctx`` is the caller's context; by default the process group is joined from
    torchrun's environment (:func:`~msae_plugin.distributed.context.init_from_env`) and left
    joined. ``override_dataset`` / ``override_model`` are those of
    ``LanguageModelSAETrainingRunner`` (the dataset is the *whole* dataset: each rank takes its
    share). Returns the trained SAE on every rank; rank 0 saves it to ``cfg.output_path``.
    """
    ctx = dist_ctx if dist_ctx is not None else init_from_env(cfg.device)
    if cfg.resume_from_checkpoint is not None:
        check_world_size(cfg.resume_from_checkpoint, ctx)
    torch.manual_seed(cfg.seed)  # the same SAE initialisation on every rank
    if not ctx.active:
        return LanguageModelSAETrainingRunner(
            cfg, override_dataset=override_dataset, override_model=override_model
        ).run()

    local = _per_rank_config(cfg, ctx)
    dataset = override_dataset if override_dataset is not None else load_dataset_like_saelens(cfg)
    with _quiet_override_warning() if override_dataset is None else nullcontext():
        runner = LanguageModelSAETrainingRunner(
            local, override_dataset=shard_dataset(dataset, ctx), override_model=override_model
        )
    if override_dataset is None and getattr(runner.model, "tokenizer", None) is not None \
            and runner.activations_store.is_dataset_tokenized:
        # SAELens checks this only when it loads the path itself
        validate_pretokenized_dataset_tokenizer(cfg.dataset_path, runner.model.tokenizer)

    # checkpoints and the saved runner config are the global config's, in rank 0's folder
    global_cfg = copy.deepcopy(cfg)
    global_cfg.checkpoint_path = broadcast_object(cfg.checkpoint_path, ctx,
                                                  "agreeing on the checkpoint folder")
    if not ctx.is_main:
        global_cfg.logger.log_to_wandb = False
    runner.cfg = global_cfg
    trainer_cfg = global_cfg.to_sae_trainer_config()
    trainer_cfg.device = ctx.device_for(cfg.device)
    runner._set_sae_metadata()  # what runner.run() records before training
    _broadcast_sae(runner.sae, ctx)

    def save_checkpoint(checkpoint_path: Path | None) -> None:  # rank 0 only (the mixin)
        runner.save_checkpoint(checkpoint_path)
        if checkpoint_path is None:
            return
        for rank, position in enumerate(trainer.store_positions):
            save_file({"n_dataset_processed": torch.tensor(position)},
                      str(checkpoint_path / rank_store_filename(rank)))
        write_world_size(checkpoint_path, ctx)

    data_provider: DataProvider = runner.activations_store
    if local.prefetch_llm_batches:
        size = 1 if isinstance(local.prefetch_llm_batches, bool) else local.prefetch_llm_batches
        data_provider = PrefetchingIterator(iter(runner.activations_store), prefetch=size)
    try:
        trainer = LanguageModelDataParallelTrainer(
            cfg=trainer_cfg,
            sae=runner.sae,
            data_provider=data_provider,
            evaluator=runner.evaluator if ctx.is_main else None,
            save_checkpoint_fn=save_checkpoint,
            dist_ctx=ctx,
            activations_store=runner.activations_store,
        )
        if global_cfg.logger.log_to_wandb:
            wandb.init(project=cfg.logger.wandb_project, entity=cfg.logger.wandb_entity,
                       config=cfg.to_dict(), name=cfg.logger.run_name, id=cfg.logger.wandb_id)
        if cfg.resume_from_checkpoint is not None:
            _resume(trainer, runner, cfg.resume_from_checkpoint, ctx)
        runner._compile_sae_if_needed()
        sae = trainer.fit()
        if cfg.output_path is not None and ctx.is_main:
            runner.save_final_sae(sae, cfg.output_path,
                                  log_feature_sparsity=trainer.log_feature_sparsity)
        ctx.barrier()
        if global_cfg.logger.log_to_wandb:
            wandb.finish()
        return sae
    finally:
        if isinstance(data_provider, PrefetchingIterator):
            data_provider.close()
