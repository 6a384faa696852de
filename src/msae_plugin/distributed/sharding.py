"""Each rank's disjoint share of an image stream.

Rank ``r`` of ``W`` takes the images ``r, r + W, r + 2W, ...`` of the one-process stream
(positions counted over the whole stream, across epochs). Why strided rather than contiguous
blocks:

* the shares are disjoint and together they are the whole stream, once per epoch;
* the ``t``-th batch of every rank together hold the images of the one-process run's ``t``-th
  global batch (when a rank's batch is whole images), so a ``W``-process run trains on the same
  global batches as a one-process run: with an unshuffled buffer (``activations_mixing_fraction
  = 0``) the result is the same SAE to float rounding, which the tests check;
* every rank reads the same number of images per step, so one position (``images_consumed``,
  counted in the rank's own share) describes where *every* rank is, and rank 0's checkpoint is
  enough to resume all of them.

Cost: a source that can read a strided part of an epoch (``epoch_strided``: a folder of image
files) reads, decodes and preprocesses only the rank's files. Other sources (the rendered digit
scenes, in-memory images) are drawn whole by every rank, which keeps its share; the model
forward, the part that dominates extraction, always runs on the share only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from msae_plugin.distributed.context import DistContext
from msae_plugin.vision.image_sources import ImageSource, ImageSourceError, prepare_images


class ShardedImageSource(ImageSource):
    """Rank ``ctx.rank``'s share of ``source``; image ``i`` of the share is image
    ``i * world_size + rank`` of the whole stream."""

    def __init__(self, source: ImageSource, ctx: DistContext) -> None:
        if not 0 <= ctx.rank < ctx.world_size:
            raise ImageSourceError(f"rank {ctx.rank} is not in 0..{ctx.world_size - 1}")
        self.source = source
        self.rank = ctx.rank
        self.world_size = ctx.world_size
        self.repeatable = source.repeatable
        self.raw_pixels = source.raw_pixels
        self.epoch_size = None  # a share does not end with the stream's epochs
        self.description = f"{source.description}, share {ctx.rank} of {ctx.world_size}"

    def _epoch(self, epoch: int, start: int, batch_size: int) -> Iterator[Any]:
        # never used: batches() is overridden to stride over the whole stream
        raise NotImplementedError  # pragma: no cover

    def batches(self, batch_size: int, model: Any, start_image: int = 0) -> Iterator[torch.Tensor]:
        """Batches of ``batch_size`` images of this share, from image ``start_image`` of the
        share on (image ``start_image * world_size + rank`` of the stream)."""
        if batch_size < 1:
            raise ImageSourceError(f"batch_size must be >= 1, got {batch_size}")
        w, r = self.world_size, self.rank
        if hasattr(self.source, "epoch_strided") and self.source.epoch_size:
            # read only this rank's images; ImageSource.batches regroups them across epochs
            yield from ImageSource.batches(self, batch_size, model, start_image)
            return
        # aligned global batches of batch_size * w images hold exactly batch_size of ours
        for x in self.source.batches(batch_size * w, model, start_image=start_image * w):
            mine = x[r::w]
            if mine.shape[0]:
                yield mine

    def _stream(self, batch_size: int, model: Any, start_image: int) -> Iterator[torch.Tensor]:
        """Model-ready batches of this share from a source with ``epoch_strided``: share image
        ``i`` is stream image ``g = i * world_size + rank``, i.e. image ``g mod n`` of epoch
        ``g div n`` for epochs of ``n`` images."""
        n, w = int(self.source.epoch_size), self.world_size
        g = start_image * w + self.rank
        while True:
            epoch, i = divmod(g, n)
            for raw in self.source.epoch_strided(epoch, i, w, batch_size):
                yield prepare_images(raw, model, self.source.raw_pixels)
            g += w * len(range(i, n, w))

    def heldout_batches(
        self, n_images: int, batch_size: int, model: Any
    ) -> Iterator[torch.Tensor] | None:
        return self.source.heldout_batches(n_images, batch_size, model)
