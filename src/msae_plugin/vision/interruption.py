"""The data provider a vision training run hands SAELens's trainer: it turns SIGINT/SIGTERM into
a stop at the next step boundary, agreed by every rank of a multi-process run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from sae_lens.training._interruption import InterruptedException

from msae_plugin.distributed.collectives import any_rank
from msae_plugin.distributed.context import DistContext
from msae_plugin.vision.activations import ImageActivationProvider


class InterruptibleProvider:
    """Forwards the provider; raises a pending interrupt at the start of ``next`` (a safe point:
    the previous step, its checkpoint and counters are complete). In a multi-process run the
    ranks agree first, so all of them stop at the same step (a signal reaches them at different
    moments) and save one checkpoint together."""

    def __init__(self, provider: ImageActivationProvider, ctx: DistContext) -> None:
        self.provider = provider
        self.ctx = ctx
        self.interrupt_requested = False

    def request_interrupt(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.interrupt_requested:  # a second signal: stop now
            raise InterruptedException()
        self.interrupt_requested = True

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        if any_rank(self.interrupt_requested, self.ctx, "agreeing on an interrupt"):
            raise InterruptedException()
        return next(self.provider)
