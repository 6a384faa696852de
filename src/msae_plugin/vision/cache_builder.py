"""Fill a config's activation cache without training (one process or a torchrun launch).

Extraction is the expensive half of vision SAE training (a CLIP forward per image); a sweep of
SAE settings over the same activations pays it once when the cache is built first. Under
``torchrun`` every rank extracts its strided share of the image stream into its own sub-cache
(:mod:`msae_plugin.distributed.cache`), so a later training run with the same number of
processes reads everything back. The cache is exactly what a training run of the config would
have written: the same provider, the same stream, the same shards.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from tqdm.auto import tqdm

from msae_plugin.distributed.cache import write_index
from msae_plugin.distributed.context import DistContext, current
from msae_plugin.vision.config_files import VisionConfigError
from msae_plugin.vision.training_config import VisionSAERunnerConfig


@dataclass
class CacheBuildResult:
    """What this rank's (sub-)cache holds after the build."""

    path: str
    n_images: int
    n_tokens: int
    added_images: int


def tokens_for_training(cfg: VisionSAERunnerConfig) -> int:
    """Global tokens a training run of ``cfg`` reads: its steps, the batches used for input
    statistics / norm scaling, and the mixing buffer's read-ahead."""
    batches = cfg.total_training_steps + cfg.n_batches_for_norm_estimate + cfg.n_batches_in_buffer
    return batches * cfg.train_batch_size_tokens


def build_activation_cache(
    cfg: VisionSAERunnerConfig,
    n_tokens: int | None = None,
    dist_ctx: DistContext | None = None,
    override_model: Any = None,
    progress: bool = True,
) -> CacheBuildResult:
    """Extract ``n_tokens`` global tokens (default :func:`tokens_for_training`) of ``cfg``'s
    hook into ``cfg.cached_activations_path``; tokens already cached are not recomputed."""
    from msae_plugin.vision.training import VisionSAETrainingRunner

    ctx = dist_ctx if dist_ctx is not None else current()
    total = tokens_for_training(cfg) if n_tokens is None else int(n_tokens)
    if total < 1:
        raise VisionConfigError(f"the number of tokens to cache must be >= 1, got {total}")
    # (the config fills in the default cache path when none is given)
    cfg = replace(cfg, use_cached_activations=True, output_path=None, checkpoint_path=None)
    path = cfg.cached_activations_path
    runner = VisionSAETrainingRunner(cfg, override_model=override_model, dist_ctx=ctx)
    provider = runner.provider
    tpi = provider.tokens_per_image
    local_images = -(-total // (tpi * ctx.world_size))  # whole images, per rank
    start = provider.cache.n_images
    with tqdm(total=local_images * tpi, initial=min(start, local_images) * tpi, unit="tok",
              desc="Caching activations", disable=not (progress and ctx.is_main)) as bar:
        if start < local_images:
            provider.images_consumed = start
            for tokens in provider.token_batches():
                bar.update(tokens.shape[0])
                if provider.images_consumed >= local_images:
                    break
    provider.flush_cache()
    ctx.barrier()
    if ctx.active and ctx.is_main:
        write_index(path, ctx)
    ctx.barrier()
    cache = provider.cache
    return CacheBuildResult(path=str(cache.path), n_images=cache.n_images,
                            n_tokens=cache.n_tokens, added_images=cache.n_images - start)
