"""Which process of a ``torchrun`` launch this is, and joining the others.

``torchrun`` (or any launcher that follows its convention: SLURM scripts, ``torch.distributed``'s
static rendezvous) tells each process who it is through environment variables: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`init_from_env`
reads them and joins the process group; without them it returns the one-process context, so
the same command runs unchanged with and without ``torchrun``.

Why a timeout matters: a collective waits for every rank. A rank that died is noticed at once
by gloo (its socket closes), but one that hangs (stopped, swapped out, stuck in I/O) would
block the others forever. Every collective of the run therefore gives up after ``timeout_s``
(default :data:`DEFAULT_TIMEOUT_S`, ``MSAE_DIST_TIMEOUT`` in the environment) and the rank
exits with :class:`~msae_plugin.errors.DistributedError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from msae_plugin.errors import DistributedError

#: seconds a rank waits in the rendezvous and in any collective before giving up
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "MSAE_DIST_TIMEOUT"
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run (``world_size == 1``: a plain run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and the final SAE."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when there are other ranks to talk to."""
        return self.world_size > 1

    @property
    def collective_device(self) -> torch.device:
        """Where small tensors for a collective must live: NCCL reduces GPU memory only."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.active:
            guarded(dist.barrier, "waiting for the other ranks")

    def device_for(self, device: str) -> str:
        """``"cuda"`` means this rank's own GPU (``cuda:LOCAL_RANK``) in a multi-process run."""
        if self.active and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise DistributedError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw!r}")
    return value


def current() -> DistContext:
    """The context of an already joined process group (one process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        backend=str(dist.get_backend()),
    )


def init_from_env(device: str = "cpu") -> DistContext:
    """Join the process group described by torchrun's environment variables.

    Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) this is a one-process run and nothing is
    initialised. The backend is NCCL for CUDA training and gloo otherwise. A rank that cannot
    reach the rendezvous within the timeout raises :class:`DistributedError` naming the address.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext()
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={world} but {', '.join(missing)} is not set; launch with "
            "`torchrun --nproc-per-node N -m msae_plugin train CONFIG` (it sets them all)"
        )
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    seconds = timeout_s()
    try:
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world, timeout=timedelta(seconds=seconds)
        )
    except (RuntimeError, TimeoutError, OSError) as exc:
        raise DistributedError(
            f"rank {rank} of {world} could not reach the rendezvous at {where} within "
            f"{seconds:g} s ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})."
            " Check that every rank was started with the same MASTER_ADDR/MASTER_PORT (torchrun "
            "--rdzv-endpoint), that the port is open between the nodes, and that all "
            f"{world} ranks were launched; raise {TIMEOUT_ENV} for slow starts."
        ) from exc
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def guarded(fn, what: str, *args, **kwargs):  # noqa: ANN001, ANN201 - a thin wrapper
    """Run a collective; turn a dead or silent peer into a :class:`DistributedError`."""
    try:
        return fn(*args, **kwargs)
    except DistributedError:
        raise
    except (RuntimeError, TimeoutError, OSError) as exc:
        rank = dist.get_rank() if dist.is_initialized() else 0
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DistributedError(
            f"rank {rank}: another rank stopped answering while {what} ({first}). The run "
            "cannot go on with a rank missing; this rank exits. Restart all ranks with the "
            "same command plus --resume to continue from the newest checkpoint."
        ) from exc
