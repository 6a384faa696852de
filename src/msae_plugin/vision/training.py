"""Train SAELens SAEs on CLIP image activations from a config, the SAELens way.

:class:`VisionSAETrainingRunner` is the analogue of ``LanguageModelSAETrainingRunner``: it loads
the hooked model, builds the activation provider and the training SAE (any architecture in
SAELens's training registry, ``"msae"`` included), trains with SAELens's ``SAETrainer``, and
saves the SAE with ``save_inference_model`` (``cfg.json`` + ``sae_weights.safetensors``) plus
``runner_cfg.json``. Checkpoints are SAELens training checkpoints plus the provider's position in
the image stream, so an interrupted run resumes where it stopped.

The config lives in :mod:`~msae_plugin.vision.training_config`, config-file parsing in
:mod:`~msae_plugin.vision.config_files` and the W&B evaluator in
:mod:`~msae_plugin.vision.evaluation`; their public names are re-exported here.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import torch
from sae_lens import logger
from sae_lens.constants import RUNNER_CFG_FILENAME, SAE_CFG_FILENAME, SPARSITY_FILENAME
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
from sae_lens.training._interruption import InterruptedException
from safetensors.torch import save_file

from msae_plugin.atomic_io import remove_temporaries, staged_files
from msae_plugin.distributed.cache import open_cache, write_index
from msae_plugin.distributed.checkpoint import write_world_size
from msae_plugin.distributed.collectives import broadcast_object, gather_rows
from msae_plugin.distributed.context import DistContext, current
from msae_plugin.distributed.sharding import ShardedImageSource
from msae_plugin.distributed.trainer import DataParallelMixin
from msae_plugin.vision.activation_cache import cache_key
from msae_plugin.vision.activations import (
    ImageActivationProvider,
    to_torch_dtype,
)
from msae_plugin.vision.config_files import (
    VisionConfigError,
    apply_overrides,
    build_sae_config,
    load_config_dict,
)
from msae_plugin.vision.evaluation import VisionSAEEvaluator
from msae_plugin.vision.interruption import InterruptibleProvider
from msae_plugin.vision.run_checks import (
    check_batch_splits,
    check_config_for_model,
    check_devices,
    check_resume_checkpoint,
    prepare_output_paths,
)
from msae_plugin.vision.training_checkpoints import (
    VisionSAETrainer,
    find_latest_checkpoint,
    resolve_resume_checkpoint,
    validate_training_checkpoint,
)
from msae_plugin.vision.training_config import (
    VisionSAERunnerConfig,
    default_cached_activations_path,
    resolve_model_class,
)

__all__ = [
    "MAX_STATS_TOKENS",
    "VisionConfigError",
    "VisionSAEEvaluator",
    "VisionSAERunnerConfig",
    "VisionSAETrainer",
    "VisionSAETrainingRunner",
    "apply_overrides",
    "build_sae_config",
    "check_config_for_model",
    "default_cached_activations_path",
    "find_latest_checkpoint",
    "load_config_dict",
    "resolve_model_class",
    "validate_training_checkpoint",
]

#: MSAE input statistics (mean, scale) are fitted on at most this many tokens
MAX_STATS_TOKENS = 1 << 17


class DataParallelVisionSAETrainer(DataParallelMixin, VisionSAETrainer):
    """``VisionSAETrainer`` (atomic checkpoints, safe resume), data-parallel when launched
    with torchrun; exactly ``VisionSAETrainer`` in a one-process run."""


class VisionSAETrainingRunner:
    """Train an SAE on hooked CLIP image activations with SAELens's ``SAETrainer``.

    Args:
        cfg: the run configuration.
        override_model: a ready hooked model instead of loading ``cfg.model_name``.
        override_images: images (a folder, a dataset name, an ``ImageSource`` or an iterable)
            instead of ``cfg.dataset_path``.
        resume_from_checkpoint: resume an earlier run of this config: a checkpoint folder, a
            folder of checkpoints (the newest complete one in it is used) or ``"auto"`` (the
            newest complete one under ``cfg.checkpoint_path``; the run starts afresh when there
            is none yet).
        dist_ctx: this process's place in a ``torchrun`` launch (default: the joined process
            group, if any). With ``W`` ranks each reads a strided share of the image stream
            and trains on ``train_batch_size_tokens / W`` rows per step; gradients and
            statistics are reduced so the run equals a one-process run on the global batch
            (see :mod:`msae_plugin.distributed`). Rank 0 writes checkpoints and the SAE.

    Output and checkpoint folders are created (and checked) here, before any work starts.
    """

    def __init__(
        self,
        cfg: VisionSAERunnerConfig,
        override_model: Any = None,
        override_images: Any = None,
        resume_from_checkpoint: str | Path | None = None,
        dist_ctx: DistContext | None = None,
    ) -> None:
        import msae_plugin

        msae_plugin.register()
        self.cfg = cfg
        self.dist = ctx = dist_ctx if dist_ctx is not None else current()
        if ctx.active:
            check_batch_splits(cfg, ctx)
            cfg.device = ctx.device_for(cfg.device)
            if cfg.model_device is not None:
                cfg.model_device = ctx.device_for(cfg.model_device)
        if resume_from_checkpoint is not None:
            cfg.resume_from_checkpoint = str(resume_from_checkpoint)
        check_devices(cfg)
        if ctx.is_main:
            prepare_output_paths(cfg)
        ctx.barrier()
        if cfg.resume_from_checkpoint is not None:
            found = None
            if ctx.is_main:
                found = resolve_resume_checkpoint(cfg.resume_from_checkpoint, cfg.checkpoint_path)
            found = broadcast_object(found, ctx, "agreeing on the checkpoint to resume")
            if found is None:
                where = cfg.resume_from_checkpoint
                where = cfg.checkpoint_path if where == "auto" else where
                logger.warning(f"no complete checkpoint under {where} yet: starting afresh")
            cfg.resume_from_checkpoint = None if found is None else str(found)
        if override_model is not None:
            logger.warning(
                f"You just passed in a model which will override the one specified in your "
                f"configuration: {cfg.model_name}. As a consequence this run will not be "
                "reproducible via configuration alone."
            )
        if override_images is not None:
            logger.warning(
                f"You just passed in images which will override the dataset specified in your "
                f"configuration: {cfg.dataset_path}. As a consequence this run will not be "
                "reproducible via configuration alone."
            )
        torch.manual_seed(cfg.seed)
        if override_model is None:
            model_cls = resolve_model_class(cfg.model_class_name)
            self.model = model_cls.from_pretrained(
                cfg.model_name,
                device=cfg.model_device,
                dtype=to_torch_dtype(cfg.dtype),
                **(cfg.model_from_pretrained_kwargs or {}),
            )
        else:
            self.model = override_model
        self.model.eval()
        check_config_for_model(cfg, self.model)
        if cfg.resume_from_checkpoint is not None:
            check_resume_checkpoint(cfg, Path(cfg.resume_from_checkpoint), ctx)

        if cfg.from_pretrained_path is not None:
            self.sae = TrainingSAE.load_from_disk(cfg.from_pretrained_path, cfg.device)
        else:
            self.sae = TrainingSAE.from_dict(
                TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict()).to_dict()
            )
        self.sae.to(cfg.device)

        images = override_images if override_images is not None else cfg.dataset_path
        self.provider = ImageActivationProvider(
            self.model,
            cfg.hook_name,
            images,
            token_selection=cfg.token_selection,
            store_batch_size_images=cfg.store_batch_size_images,
            train_batch_size_tokens=cfg.train_batch_size_tokens // ctx.world_size,
            n_batches_in_buffer=cfg.n_batches_in_buffer,
            device=cfg.device,
            dtype=cfg.dtype,
            seed=cfg.seed,
            mix_fraction=cfg.activations_mixing_fraction,
            dataset_kwargs=cfg.dataset_kwargs if override_images is None else None,
        )
        if ctx.active:
            self.provider.source = ShardedImageSource(self.provider.source, ctx)
        if cfg.use_cached_activations:
            assert cfg.cached_activations_path is not None
            self.provider.cache = open_cache(cfg.cached_activations_path, self.cache_key(), ctx)
        if cfg.verbose:
            tpi = self.provider.tokens_per_image
            logger.info(f"Run name: {cfg.logger.run_name}")
            logger.info(
                f"{cfg.hook_name} of {cfg.model_name}: d_in={self.provider.d_in}, {tpi} tokens "
                f"per image (token_selection={cfg.token_selection!r}), "
                f"~{cfg.training_tokens / tpi:.0f} training images"
            )
            logger.info(f"Total training steps: {cfg.total_training_steps}")
        self.trainer: VisionSAETrainer | None = None
        self.interrupted_checkpoint: Path | None = None
        self._eval_cache: tuple[torch.Tensor, bool] | None = None

    # ------------------------------------------------------------------ facts
    def cache_key(self) -> dict[str, Any]:
        mcfg = self.model.cfg
        return cache_key(
            model_name=self.cfg.model_name,
            pretrained=mcfg.pretrained,
            hook_name=self.cfg.hook_name,
            token_selection=self.cfg.token_selection,
            image_size=mcfg.image_size,
            n_ctx=mcfg.n_ctx,
            tokens_per_image=self.provider.tokens_per_image,
            d_in=self.provider.d_in,
            dtype=str(self.cfg.dtype).removeprefix("torch."),
            dataset_path=str(self.cfg.dataset_path),
        )

    # ------------------------------------------------------------------ run
    def run(self) -> TrainingSAE[Any]:
        """Train, save the final SAE to ``cfg.output_path`` and return it."""
        import wandb

        cfg = self.cfg
        self._set_sae_metadata()
        if cfg.logger.log_to_wandb:
            wandb.init(
                project=cfg.logger.wandb_project,
                entity=cfg.logger.wandb_entity,
                config=cfg.to_dict(),
                name=cfg.logger.run_name,
                id=cfg.logger.wandb_id,
            )
        data_provider = InterruptibleProvider(self.provider, self.dist)
        if cfg.checkpoint_path is not None and self.dist.is_main:
            remove_temporaries(cfg.checkpoint_path)  # left by a killed checkpoint write
        trainer = DataParallelVisionSAETrainer(
            cfg=cfg.to_sae_trainer_config(),
            sae=self.sae,
            data_provider=data_provider,
            evaluator=VisionSAEEvaluator(self),
            save_checkpoint_fn=self.save_checkpoint,
            dist_ctx=self.dist,
        )
        self.trainer = trainer
        if cfg.resume_from_checkpoint is not None:
            logger.info(f"Resuming from checkpoint: {cfg.resume_from_checkpoint}")
            trainer.load_trainer_state(cfg.resume_from_checkpoint)
            self.sae.load_weights_from_checkpoint(cfg.resume_from_checkpoint)
            self.provider.load_from_checkpoint(cfg.resume_from_checkpoint)
        else:
            torch.manual_seed(cfg.seed)
            self._fit_input_statistics()

        sae = self._fit_with_interruption_handling(trainer, data_provider)
        self.provider.flush_cache()
        self.dist.barrier()
        if self.dist.active and cfg.use_cached_activations and self.dist.is_main:
            write_index(cfg.cached_activations_path, self.dist)
        if cfg.output_path is not None and self.dist.is_main:
            self.save_final_sae(sae, cfg.output_path, trainer.log_feature_sparsity)
        self.dist.barrier()
        if cfg.logger.log_to_wandb:
            wandb.finish()
        return sae

    def _fit_input_statistics(self) -> None:
        """MSAE standardises its inputs with a mean and scale fitted once before training."""
        fit = getattr(self.sae, "fit_input_statistics", None)
        if fit is None or bool(getattr(self.sae, "input_stats_fitted", True)):
            return
        n_batches = min(
            self.cfg.n_batches_for_norm_estimate,
            max(1, MAX_STATS_TOKENS // self.cfg.train_batch_size_tokens),
            self.cfg.total_training_steps,
        )
        sample = torch.cat([next(self.provider) for _ in range(n_batches)])
        # every rank fits on all ranks' samples: the same statistics a one-process run gets
        fit(gather_rows(sample, self.dist, "gathering the input-statistics sample"))

    def _fit_with_interruption_handling(
        self, trainer: VisionSAETrainer, data_provider: InterruptibleProvider
    ) -> TrainingSAE[Any]:
        in_main = threading.current_thread() is threading.main_thread()
        previous = {}
        if in_main:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, data_provider.request_interrupt)
        try:
            return trainer.fit()
        except (KeyboardInterrupt, InterruptedException):
            if self.cfg.checkpoint_path is not None:
                if self.dist.is_main:
                    logger.warning("interrupted, saving progress")
                name = str(trainer.n_training_samples)
                trainer.save_checkpoint(checkpoint_name=name)
                self.interrupted_checkpoint = Path(self.cfg.checkpoint_path) / name
                logger.info(f"checkpoint saved to {self.interrupted_checkpoint}")
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def save_checkpoint(self, checkpoint_path: Path | None) -> None:
        """SAETrainer's ``save_checkpoint_fn``: provider state + runner config (into the
        temporary folder :class:`VisionSAETrainer` renames into place when complete)."""
        if checkpoint_path is None:
            return
        self.provider.save_to_checkpoint(checkpoint_path)
        with open(Path(checkpoint_path) / RUNNER_CFG_FILENAME, "w") as f:
            json.dump(self.cfg.to_dict(), f)
        write_world_size(checkpoint_path, self.dist)

    def save_final_sae(
        self,
        sae: TrainingSAE[Any],
        output_path: str | Path,
        log_feature_sparsity: torch.Tensor | None = None,
    ) -> None:
        base = Path(output_path)
        with staged_files(base, last=(SAE_CFG_FILENAME,)) as staging:
            weights, cfg_file = sae.save_inference_model(str(staging))
            if log_feature_sparsity is not None:
                save_file({"sparsity": log_feature_sparsity}, staging / SPARSITY_FILENAME)
            (staging / RUNNER_CFG_FILENAME).write_text(json.dumps(self.cfg.to_dict()))
        weights_path, cfg_path = base / Path(weights).name, base / Path(cfg_file).name
        sparsity_path = base / SPARSITY_FILENAME if log_feature_sparsity is not None else None
        if self.cfg.logger.log_to_wandb and self.trainer is not None:
            self.cfg.logger.log(
                self.trainer, weights_path, cfg_path, sparsity_path=sparsity_path,
                wandb_aliases=["final_model"],
            )

    def _set_sae_metadata(self) -> None:
        meta = self.sae.cfg.metadata
        mcfg = self.model.cfg
        meta.model_name = self.cfg.model_name
        meta.model_class_name = self.cfg.model_class_name
        meta.hook_name = self.cfg.hook_name
        meta.hook_head_index = None
        meta.context_size = self.provider.tokens_per_image
        meta.token_selection = self.cfg.token_selection
        meta.image_size = list(mcfg.image_size)
        meta.patch_size = list(mcfg.patch_size)
        meta.grid_size = list(mcfg.grid_size)
        meta.n_ctx = int(mcfg.n_ctx)
        meta.n_prefix_tokens = int(mcfg.n_prefix_tokens)
        meta.dataset_path = self.cfg.dataset_path
        meta.pretrained = mcfg.pretrained
        # (model_from_pretrained_kwargs stay in runner_cfg.json: SAELens warns on load about
        # HookedSAETransformer whenever an SAE's metadata holds non-empty ones)

    # ------------------------------------------------------------------ evaluation
    def eval_activations(self) -> tuple[torch.Tensor, bool]:
        """``(tokens, held_out)`` of ``n_eval_batches * store_batch_size_images`` images (fixed
        per runner; held out when the dataset has a test split)."""
        if self._eval_cache is None:
            n_images = self.cfg.n_eval_batches * self.cfg.store_batch_size_images
            self._eval_cache = self.provider.eval_activations(n_images)
        return self._eval_cache

    def evaluate(self, sae: Any = None, activations: torch.Tensor | None = None) -> dict[str, Any]:
        """``msae_plugin.metrics.evaluate_sae`` on the evaluation activations: FVU, cosine, L0,
        dead fraction (for MSAE at every k of its ladder and the ReLU path)."""
        from msae_plugin.metrics import evaluate_sae

        sae = self.sae if sae is None else sae
        x = self.eval_activations()[0] if activations is None else activations
        ks = None if hasattr(sae.cfg, "ladder") else [None]
        was_training = sae.training
        sae.eval()
        try:
            return evaluate_sae(sae, x, ks=ks)
        finally:
            sae.train(was_training)
