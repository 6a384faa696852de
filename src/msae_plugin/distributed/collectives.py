"""The few collectives data-parallel SAE training needs, each guarded against a lost peer.

All of them are no-ops in a one-process run, so callers never branch on the world size.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

from msae_plugin.distributed.context import DistContext, guarded


def average_gradients_in_backward(
    params: Iterable[torch.nn.Parameter], ctx: DistContext
) -> list[torch.utils.hooks.RemovableHandle]:
    """Average each parameter's gradient over the ranks as soon as backward has written it.

    Why hooks and not ``DistributedDataParallel``: DDP reduces gradients when the *wrapped
    module's* ``forward`` was called, but SAELens's ``SAETrainer`` calls
    ``sae.training_forward_pass`` and then ``loss.backward()``, clips and steps inside one method
    (``_train_step``), with no seam between backward and clipping. A post-accumulate-grad hook
    on every parameter runs inside that ``backward()``, so clipping, the optimiser and any
    gradient post-processing see the averaged gradient, as in a one-process run on the global
    batch (every rank's loss is a mean over its equal share of the batch). Every rank runs the
    same graph, so the hooks fire in the same order everywhere.
    """
    if not ctx.active:
        return []
    world = float(ctx.world_size)

    def hook(p: torch.Tensor) -> None:
        guarded(dist.all_reduce, "averaging gradients", p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)

    return [p.register_post_accumulate_grad_hook(hook) for p in params if p.requires_grad]


def sum_(tensor: torch.Tensor, ctx: DistContext, what: str) -> torch.Tensor:
    """In-place sum over the ranks."""
    if ctx.active:
        guarded(dist.all_reduce, what, tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, ctx: DistContext, what: str) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. an interrupt one rank received)."""
    if not ctx.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.collective_device)
    return bool(sum_(t, ctx, what).item() > 0)


def gather_rows(x: torch.Tensor, ctx: DistContext, what: str) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order (all ranks must pass the same shape)."""
    if not ctx.active:
        return x
    parts = [torch.empty_like(x) for _ in range(ctx.world_size)]
    guarded(dist.all_gather, what, parts, x.contiguous())
    return torch.cat(parts)


def broadcast_object(obj: object, ctx: DistContext, what: str) -> object:
    """Rank 0's ``obj`` on every rank (e.g. the checkpoint folder rank 0 resolved)."""
    if not ctx.active:
        return obj
    box = [obj]
    guarded(dist.broadcast_object_list, what, box, src=0)
    return box[0]
