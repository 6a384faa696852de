"""The world size a checkpoint was written with, for the vision and the language-model runners.

A rank's position in its share of the data depends on the number of ranks, so a checkpoint of a
``W``-process run can only be resumed by ``W`` processes. Multi-process runs write
``distributed.json`` (``{"world_size": W, "sharding": "strided"}``) into each checkpoint;
one-process checkpoints have none and count as ``W = 1``.
"""

from __future__ import annotations

import json
from pathlib import Path

from msae_plugin.atomic_io import atomic_write
from msae_plugin.distributed.context import DistContext
from msae_plugin.errors import CheckpointError, DistributedError

WORLD_FILENAME = "distributed.json"


def write_world_size(checkpoint: str | Path, ctx: DistContext) -> None:
    """Record ``ctx.world_size`` in ``checkpoint`` (atomically; nothing for one process)."""
    if not ctx.active:
        return
    record = {"world_size": ctx.world_size, "sharding": "strided"}
    atomic_write(Path(checkpoint) / WORLD_FILENAME, lambda p: p.write_text(json.dumps(record)))


def read_world_size(checkpoint: str | Path) -> int:
    """How many processes wrote ``checkpoint`` (1 without ``distributed.json``)."""
    file = Path(checkpoint) / WORLD_FILENAME
    if not file.is_file():
        return 1
    try:
        return int(json.loads(file.read_text())["world_size"])
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError,
            ValueError) as exc:
        raise CheckpointError(
            f"{file} cannot be read or has no world_size ({exc}); the checkpoint is damaged: "
            "delete it, or resume from an older one"
        ) from None


def check_world_size(checkpoint: str | Path, ctx: DistContext) -> None:
    """Refuse to resume ``checkpoint`` with another number of processes than wrote it."""
    written = read_world_size(checkpoint)
    if written != ctx.world_size:
        how = "one process (no torchrun)" if written == 1 else \
            f"{written} processes (torchrun --nproc-per-node {written})"
        raise DistributedError(
            f"checkpoint {checkpoint} was written by a {written}-process run, this run has "
            f"{ctx.world_size}: each rank's position in its share of the data depends on the "
            f"number of ranks. Resume with {how}, or start a new run."
        )
