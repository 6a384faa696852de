"""The pieces of data-parallel training that need no second process: stream shards, the sharded
activation cache and its refusals, the batch split check. (Two-process runs: test_distributed.)"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
import torch

from msae_plugin.distributed.cache import (
    open_cache,
    open_rank_cache,
    read_sharded_cache,
    write_index,
)
from msae_plugin.distributed.context import DistContext
from msae_plugin.distributed.sharding import ShardedImageSource
from msae_plugin.vision.activation_cache import ActivationCache, ActivationCacheError, cache_key
from msae_plugin.vision.image_sources import IterableImageSource

TPI, D = 2, 3


class _Model:
    """Just what ImageSource.batches needs: images already at the model's size pass through."""

    class cfg:  # noqa: N801
        image_size = (4, 4)

    device, dtype = torch.device("cpu"), torch.float32


def _images(n: int) -> list[torch.Tensor]:
    return [torch.full((3, 4, 4), float(i)) for i in range(n)]


def _ids(batches) -> list[int]:  # noqa: ANN001
    return [int(x[0, 0, 0]) for b in batches for x in b]


@pytest.mark.parametrize("world", [2, 3])
def test_the_shares_are_disjoint_strided_and_cover_the_stream(world: int) -> None:
    source = IterableImageSource(_images(10))
    shares = []
    for r in range(world):
        share = ShardedImageSource(source, DistContext(rank=r, world_size=world))
        it = share.batches(2, _Model(), start_image=0)
        shares.append(_ids(next(it) for _ in range(5)))  # 10 images: into the 2nd epoch
    for r, ids in enumerate(shares):
        assert ids == [(r + world * i) % 10 for i in range(10)]
    # the first epoch: rank r holds ceil((10 - r) / world) of it; together, each image once
    first_epoch = [i for r, ids in enumerate(shares) for i in ids[: -(-(10 - r) // world)]]
    assert sorted(first_epoch) == list(range(10))


def test_a_share_resumes_at_its_own_position() -> None:
    share = ShardedImageSource(IterableImageSource(_images(12)), DistContext(rank=1, world_size=2))
    assert _ids([next(share.batches(3, _Model(), start_image=2))]) == [5, 7, 9]


def _key(**kw: object) -> dict:
    return cache_key(model_name="m", pretrained=None, hook_name="blocks.0.hook_resid_post",
                     token_selection="all", image_size=[4, 4], n_ctx=TPI, tokens_per_image=TPI,
                     d_in=D, dtype="float32", dataset_path="d") | kw


def _write(path: Path, world: int, counts: list[int]) -> torch.Tensor:
    """Sub-caches of a run over a stream whose image g has tokens filled with g."""
    n = world * max(counts)
    stream = torch.arange(n, dtype=torch.float32).repeat_interleave(TPI)[:, None].expand(-1, D)
    for r in range(world):
        cache = open_rank_cache(path, _key(), DistContext(rank=r, world_size=world))
        mine = stream.reshape(n, TPI, D)[r::world][: counts[r]]
        cache.append(mine.reshape(-1, D).contiguous(), counts[r])
    write_index(path, DistContext(rank=0, world_size=world))
    return stream[: sum(counts) * TPI]


def test_sub_caches_read_back_as_the_one_process_stream(tmp_path: Path) -> None:
    stream = _write(tmp_path / "c", 3, [4, 3, 3])
    torch.testing.assert_close(read_sharded_cache(tmp_path / "c"), stream)
    index = json.loads((tmp_path / "c" / "shards.json").read_text())
    assert index["world_size"] == 3 and index["hook_name"] == "blocks.0.hook_resid_post"


def test_uneven_shares_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "c", 2, [2, 4])
    with pytest.raises(ActivationCacheError, match=r"uneven shares.*hold \[2, 4\].*gives \[3, 3\]"):
        read_sharded_cache(tmp_path / "c")


def test_a_sub_cache_grown_after_the_index_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "c", 2, [2, 2])
    sub = ActivationCache.open(tmp_path / "c" / "rank0-of-2", _key())
    sub.append(torch.zeros(TPI, D), 1)
    with pytest.raises(ActivationCacheError, match=r"hold \[3, 2\] images but shards.json"):
        read_sharded_cache(tmp_path / "c")


def test_a_cache_of_another_world_size_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "c", 2, [2, 2])
    with pytest.raises(ActivationCacheError, match=r"written by 2 ranks, this run has 3.*"
                       r"--nproc-per-node 2"):
        open_rank_cache(tmp_path / "c", _key(), DistContext(rank=0, world_size=3))
    with pytest.raises(ActivationCacheError, match=r"written by 2 ranks.*one-process run cannot"):
        open_cache(tmp_path / "c", _key(), DistContext())


def test_a_one_process_cache_is_not_sharded_silently(tmp_path: Path) -> None:
    ActivationCache.open(tmp_path / "c", _key()).append(torch.zeros(TPI, D), 1)
    with pytest.raises(ActivationCacheError, match="written by a one-process run"):
        open_cache(tmp_path / "c", _key(), DistContext(rank=1, world_size=2))


def test_a_sub_cache_for_another_hook_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "c", 2, [1, 1])
    with pytest.raises(ActivationCacheError, match=r"hook_name: cache has 'blocks.0.*"
                       r"this run uses 'blocks.1"):
        open_rank_cache(tmp_path / "c", _key(hook_name="blocks.1.hook_resid_post"),
                        DistContext(rank=1, world_size=2))


def test_a_global_batch_that_does_not_split_is_refused_before_any_work() -> None:
    from msae_plugin.errors import DistributedError
    from msae_plugin.vision.training import VisionSAERunnerConfig, VisionSAETrainingRunner

    cfg = VisionSAERunnerConfig.from_dict({
        "sae": {"architecture": "msae", "d_in": 96, "d_sae": 128, "k_start": 4},
        "train_batch_size_tokens": 130, "training_tokens": 1300,
    })
    with pytest.raises(DistributedError, match=r"130 cannot be split evenly over 3 ranks.*"
                       r"train_batch_size_tokens=129"):
        VisionSAETrainingRunner(cfg, dist_ctx=DistContext(rank=0, world_size=3))


class _PILModel(_Model):
    """Folder images are PIL images: preprocess them to [B, 3, 4, 4] with their gray level."""

    @staticmethod
    def preprocess(images) -> torch.Tensor:  # noqa: ANN001
        import numpy as np

        return torch.stack([torch.from_numpy(np.asarray(im.resize((4, 4)), dtype=np.float32))
                            .permute(2, 0, 1) for im in images])


@pytest.mark.parametrize(("world", "start"), [(2, 0), (3, 0), (3, 5)])
def test_a_folder_share_decodes_only_its_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: int, start: int
) -> None:
    from PIL import Image

    from msae_plugin.vision.image_sources import FolderImageSource

    for i in range(7):
        Image.new("RGB", (6, 6), (i * 10, i * 10, i * 10)).save(tmp_path / f"{i}.png")
    source = FolderImageSource(tmp_path, seed=3)
    whole = torch.cat([b for b, _ in zip(source.batches(7, _PILModel()), range(8), strict=False)])
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    for r in range(world):
        share = ShardedImageSource(source, DistContext(rank=r, world_size=world))
        before = len(opened)
        got = torch.cat(list(islice(share.batches(2, _PILModel(), start_image=start), 3)))
        # only this rank's files were decoded (a whole stream would be ~world times as many)
        assert len(opened) - before <= 6 + 1
        # share image i is stream image i * world + r (across epochs of 7 shuffled files)
        expected = whole[start * world + r :: world][: got.shape[0]]
        assert got.shape[0] == 6
        torch.testing.assert_close(got, expected)
