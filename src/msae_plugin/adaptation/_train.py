"""The cross-entropy loop both adaptation methods share (few lines, one place to read them)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from msae_plugin.adaptation.task import TaskData, check_classes


def check_train_args(steps: int, batch_size: int, lr: float) -> None:
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")


def train_loop(
    params: Sequence[torch.nn.Parameter],
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    data: TaskData,
    classes: Sequence[int],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
) -> dict[str, float]:
    """AdamW on ``params`` with cross-entropy over ``classes`` (labels remapped to their index
    in ``classes``), cosine learning-rate decay, minibatches drawn with ``seed``. Images of other
    classes in ``data`` are ignored (the base-to-novel protocol trains on base classes only)."""
    check_train_args(steps, batch_size, lr)
    idx = check_classes(classes)
    part = data.subset(idx)
    if len(part) == 0:
        raise ValueError(f"no training images of classes {idx}")
    lookup = torch.full((10,), -1, dtype=torch.long)
    lookup[torch.tensor(idx)] = torch.arange(len(idx))
    targets = lookup[part.labels]
    opt = torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    losses = []
    for _ in range(steps):
        pick = torch.randint(len(part), (min(batch_size, len(part)),), generator=gen)
        loss = F.cross_entropy(logits_fn(part.images[pick]), targets[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    tail = losses[-max(1, steps // 10):]
    return {"final_loss": sum(tail) / len(tail), "first_loss": losses[0],
            "seconds": round(time.perf_counter() - t0, 2)}
