"""SAELens's ``SAETrainer`` made data-parallel by composition, for any SAE architecture.

:class:`DataParallelMixin` goes in front of ``SAETrainer`` (or a subclass such as our
``VisionSAETrainer``). Each rank feeds the trainer its own share (``global batch / world size``
rows) of every global batch; the mixin then keeps the ranks in lock-step with a one-process run
on the global batch:

* gradients are averaged inside ``backward()`` (see
  :func:`~msae_plugin.distributed.collectives.average_gradients_in_backward` for why not DDP);
* the dead-latent statistics (``act_freq_scores``, ``n_forward_passes_since_fired``) count a
  latent as fired when it fired on any rank, so dead-latent masks (TopK's AuxK loss) and the
  saved sparsity agree on every rank and equal the one-process figures;
* ``n_training_samples`` counts global samples, so the LR schedule, checkpoint thresholds and
  the stop condition are those of the config;
* SAELens's ``expected_average_only_in`` norm scaling factor is estimated over all ranks' data;
* only rank 0 writes checkpoints (the others wait for it); ``msae train`` shows rank 0's
  progress bar only (tqdm is silenced on the other ranks before SAELens is imported).

SAELens's ``covariance_whitening`` would need a cross-rank covariance; it is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.sae_trainer import SAETrainer
from tqdm.auto import tqdm

from msae_plugin.distributed.collectives import average_gradients_in_backward, sum_
from msae_plugin.distributed.context import DistContext, current
from msae_plugin.errors import DistributedError


class DistributedActivationScaler(ActivationScaler):
    """SAELens's activation scaler whose mean-norm estimate covers every rank's batches."""

    def __init__(self, ctx: DistContext) -> None:
        super().__init__()
        self._ctx = ctx

    @torch.no_grad()
    def _calculate_mean_norm(self, data_provider: Any, n_batches_for_norm_estimate: int = 1000
                             ) -> float:
        totals = torch.zeros(2, dtype=torch.float64, device=self._ctx.collective_device)
        for _ in tqdm(range(n_batches_for_norm_estimate), desc="Estimating norm scaling factor",
                      leave=False, disable=not self._ctx.is_main):
            norms = next(data_provider).norm(dim=-1)
            totals[0] += norms.double().sum().to(totals.device)
            totals[1] += norms.numel()
        sum_(totals, self._ctx, "estimating the activation norm")
        return float(totals[0] / totals[1])

    def estimate_whitening(self, *args: Any, **kwargs: Any) -> None:
        if self._ctx.active:
            raise DistributedError(
                "normalize_activations='covariance_whitening' is not supported in a multi-process "
                "run yet (the covariance would have to be reduced across ranks); train with one "
                "process, or use 'expected_average_only_in'"
            )
        super().estimate_whitening(*args, **kwargs)


class DataParallelMixin:
    """Put before an ``SAETrainer`` class: ``class T(DataParallelMixin, SAETrainer)``."""

    def __init__(self, *args: Any, dist_ctx: DistContext | None = None, **kwargs: Any) -> None:
        ctx = dist_ctx if dist_ctx is not None else current()
        super().__init__(*args, **kwargs)
        self.dist_ctx = ctx
        cfg = self.cfg  # type: ignore[attr-defined]
        if ctx.active and cfg.train_batch_size_samples % ctx.world_size:
            raise DistributedError(
                f"the global batch of {cfg.train_batch_size_samples} rows cannot be split evenly "
                f"over {ctx.world_size} ranks; make train_batch_size_tokens a multiple of "
                f"{ctx.world_size}"
            )
        if ctx.active and cfg.logger.log_to_wandb and not ctx.is_main:
            cfg.logger.log_to_wandb = False
        self.activation_scaler = DistributedActivationScaler(ctx)
        self._grad_hooks = average_gradients_in_backward(
            self.sae.parameters(), ctx  # type: ignore[attr-defined]
        )

    @property
    def local_batch_size(self) -> int:
        return self.cfg.train_batch_size_samples // self.dist_ctx.world_size  # type: ignore

    def step(self, batch: torch.Tensor) -> Any:
        ctx = self.dist_ctx
        if ctx.active and batch.shape[0] != self.local_batch_size:
            raise DistributedError(
                f"rank {ctx.rank} got a batch of {batch.shape[0]} rows; each rank must feed "
                f"{self.local_batch_size} (global batch / world size)"
            )
        out = super().step(batch)  # type: ignore[misc]
        # SAETrainer counted this rank's rows; the run has seen every rank's
        self.n_training_samples += batch.shape[0] * (ctx.world_size - 1)  # type: ignore
        return out

    def _train_step(self, sae: Any, sae_in: torch.Tensor) -> Any:
        if not self.dist_ctx.active:
            return super()._train_step(sae, sae_in)  # type: ignore[misc]
        before = self.act_freq_scores.clone()  # type: ignore[has-type]
        out = super()._train_step(sae, sae_in)  # type: ignore[misc]
        since = self.n_forward_passes_since_fired  # type: ignore[has-type]
        # one collective: this step's firing counts and whether each latent fired here
        both = torch.cat([self.act_freq_scores - before, (since == 0).to(before.dtype)])
        sum_(both, self.dist_ctx, "reducing dead-latent statistics")
        d = before.shape[0]
        self.act_freq_scores = before + both[:d]
        since[both[d:] > 0] = 0
        return out

    def save_checkpoint(self, checkpoint_name: str, base_path: Path | str | None = None,
                        wandb_aliases: list[str] | None = None) -> None:
        if self.dist_ctx.is_main:
            super().save_checkpoint(checkpoint_name, base_path, wandb_aliases)  # type: ignore
        self.dist_ctx.barrier()


class DataParallelSAETrainer(DataParallelMixin, SAETrainer):  # type: ignore[type-arg]
    """SAELens's own trainer, data-parallel (e.g. for an ``LanguageModelSAETrainingRunner``'s
    SAE fed by a per-rank activation source)."""
