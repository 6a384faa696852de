"""An activation cache written and read by several ranks: one sub-cache per rank, an index last.

Layout of ``cached_activations_path`` for a ``W``-process run::

    shards.json                 the index: key fields, world size, per-rank counts (written last)
    rank0-of-W/manifest.json    an ordinary ActivationCache of rank 0's share of the stream
    rank0-of-W/shard_*.safetensors
    rank1-of-W/...

Every rank appends only to its own sub-cache (no two processes ever write the same file); each
sub-cache keeps the one-process guarantees (atomic shards and manifest, a valid prefix of its
share). Rank 0 writes ``shards.json`` atomically after all ranks have flushed, so a reader that
finds the index finds complete sub-caches. A ``W``-process run reads its own rank's sub-cache
back; :func:`read_sharded_cache` rebuilds the one-process token stream (image ``i`` of rank
``r`` is image ``i * W + r``).

A one-process cache is a plain :class:`~msae_plugin.vision.activation_cache.ActivationCache`
folder; the two layouts are told apart by their files and never mixed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from msae_plugin.atomic_io import atomic_write
from msae_plugin.distributed.context import DistContext
from msae_plugin.vision.activation_cache import (
    KEY_FIELDS,
    MANIFEST_FILENAME,
    ActivationCache,
    ActivationCacheError,
)

INDEX_FILENAME = "shards.json"
INDEX_FORMAT = "msae-vision-activations-sharded"


def rank_dir(path: str | Path, rank: int, world_size: int) -> Path:
    return Path(path) / f"rank{rank}-of-{world_size}"


def _other_layouts(path: Path, world_size: int) -> list[str]:
    """Sub-caches of runs with another world size (``rankR-of-V``, ``V != world_size``)."""
    if not path.is_dir():
        return []
    return sorted(
        p.name for p in path.glob("rank*-of-*")
        if p.is_dir() and not p.name.endswith(f"-of-{world_size}")
    )


def open_rank_cache(path: str | Path, key: dict[str, Any], ctx: DistContext) -> ActivationCache:
    """This rank's sub-cache of the sharded cache at ``path`` (created when missing).

    Refused with :class:`ActivationCacheError`: a one-process cache at ``path``, an index or
    sub-caches written by a run with another world size, and (as for any cache) a key mismatch.
    """
    path = Path(path)
    w = ctx.world_size
    if (path / MANIFEST_FILENAME).is_file():
        raise ActivationCacheError(
            f"the activation cache at {path} was written by a one-process run; a {w}-process "
            "run keeps one sub-cache per rank. Train from it with one process, or point "
            "cached_activations_path at another folder for this run."
        )
    index = path / INDEX_FILENAME
    if index.is_file():
        written = int(_read_index(path)["world_size"])
        if written != w:
            raise ActivationCacheError(
                f"the activation cache at {path} was written by {written} ranks, this run has "
                f"{w}: each rank reads its own share. Launch with --nproc-per-node {written}, or "
                "point cached_activations_path at another folder."
            )
    others = _other_layouts(path, w)
    if others:
        raise ActivationCacheError(
            f"{path} holds sub-caches of a run with another number of ranks ({', '.join(others)}) "
            f"but this run has {w}; use the same number of ranks or another folder"
        )
    return ActivationCache.open(rank_dir(path, ctx.rank, w), key)


def open_cache(path: str | Path, key: dict[str, Any], ctx: DistContext) -> ActivationCache:
    """The cache this process reads and extends: the plain cache at ``path`` in a one-process
    run (refusing a sharded one with a clear message), this rank's sub-cache otherwise."""
    path = Path(path)
    if ctx.active:
        return open_rank_cache(path, key, ctx)
    if (path / INDEX_FILENAME).is_file() or any(path.glob("rank*-of-*")):
        written = (_read_index(path)["world_size"] if (path / INDEX_FILENAME).is_file()
                   else "several")
        raise ActivationCacheError(
            f"the activation cache at {path} was written by {written} ranks (one sub-cache per "
            "rank); a one-process run cannot extend it. Launch with torchrun and the same number "
            "of processes, read it with msae_plugin.distributed.cache.read_sharded_cache, or "
            "point cached_activations_path at another folder."
        )
    return ActivationCache.open(path, key)


def write_index(path: str | Path, ctx: DistContext) -> Path:
    """Rank 0: record every rank's sub-cache in ``shards.json`` (atomically; call after a
    barrier that follows every rank's last flush)."""
    path = Path(path)
    w = ctx.world_size
    ranks, key = [], None
    for r in range(w):
        sub = rank_dir(path, r, w)
        if not (sub / MANIFEST_FILENAME).is_file():
            ranks.append({"dir": sub.name, "n_images": 0, "n_tokens": 0})
            continue
        manifest = json.loads((sub / MANIFEST_FILENAME).read_text())
        key = key or {f: manifest.get(f) for f in KEY_FIELDS}
        ranks.append({"dir": sub.name, "n_images": int(manifest["n_images"]),
                      "n_tokens": int(manifest["n_tokens"])})
    index = {"format": INDEX_FORMAT, "format_version": 1, **(key or {}), "world_size": w,
             "sharding": "strided-images", "ranks": ranks}
    atomic_write(path / INDEX_FILENAME, lambda p: p.write_text(json.dumps(index, indent=1)))
    return path / INDEX_FILENAME


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads((path / INDEX_FILENAME).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ActivationCacheError(
            f"{path / INDEX_FILENAME} cannot be read ({exc}); delete {path} to rebuild the cache"
        ) from exc
    if index.get("format") != INDEX_FORMAT:
        raise ActivationCacheError(f"{path / INDEX_FILENAME} is not a sharded-cache index")
    return index


def read_sharded_cache(path: str | Path, key: dict[str, Any] | None = None) -> torch.Tensor:
    """Every token of a sharded cache, in the one-process stream's order.

    Refused when the shares are uneven (rank ``r`` must hold ``ceil((N - r) / W)`` of the ``N``
    images, as a complete run leaves them) or a sub-cache disagrees with the index.
    """
    path = Path(path)
    index = _read_index(path)
    w = int(index["world_size"])
    subs = [
        ActivationCache.open(path / entry["dir"], key or {}, create=False)
        for entry in index["ranks"]
    ]
    counts = [s.n_images for s in subs]
    listed = [int(e["n_images"]) for e in index["ranks"]]
    if counts != listed:
        raise ActivationCacheError(
            f"the sub-caches of {path} hold {counts} images but {INDEX_FILENAME} lists {listed}: "
            "a rank wrote after the index (an interrupted run?). Resume the run to completion "
            f"or delete {path} to rebuild it."
        )
    n = sum(counts)
    expected = [-(-(n - r) // w) for r in range(w)]
    if counts != expected:
        raise ActivationCacheError(
            f"uneven shares in {path}: ranks hold {counts} images, but a stream of {n} images "
            f"split over {w} ranks gives {expected}. Read each rank's sub-cache on its own "
            f"(ActivationCache.open({path}/rank<R>-of-{w}, ...)) or rebuild the cache."
        )
    tpi = subs[0].tokens_per_image
    per_rank = [s.read_all().reshape(-1, tpi, int(index["d_in"])) for s in subs]
    out = torch.empty(n, tpi, int(index["d_in"]), dtype=per_rank[0].dtype)
    for r, block in enumerate(per_rank):
        out[r::w] = block
    return out.reshape(n * tpi, -1)
