"""Tests of the library-free helpers B2 uses for its dataset options (``benchmarks/_common.py``)
and of B2's argument resolution (per-dataset defaults, one shared LR grid)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import b2_many_sparsities as b2  # noqa: E402


def test_parse_lists() -> None:
    assert _common.parse_floats("4e-3, 1e-2") == [0.004, 0.01]
    assert _common.parse_floats([1, 2]) == [1.0, 2.0]
    assert _common.parse_ints("2,4,8,") == [2, 4, 8]
    with pytest.raises(ValueError):
        _common.parse_floats("")
    with pytest.raises(ValueError):
        _common.parse_ints(" , ")


@pytest.mark.parametrize(
    ("msae", "topk", "verdict"),
    [(0.105, 0.1, "PASS"), (0.1, 0.1, "PASS"), (0.1051, 0.1, "FAIL"), (0.05, 0.1, "PASS"),
     (1e-4, 0.0, "FAIL")],
)
def test_fvu_verdict(msae: float, topk: float, verdict: str) -> None:
    ratio, got = _common.fvu_verdict(msae, topk, 1.05)
    assert got == verdict
    assert ratio == pytest.approx(msae / max(topk, 1e-12))


def test_cache_builds_once_then_reads(tmp_path: Path) -> None:
    calls = []

    def build() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"train": torch.arange(6.0).view(3, 2)}

    path = tmp_path / "sub" / "acts.pt"
    key = {"hook": "hook_image_embed", "n": 3}
    t1, cached1 = _common.load_or_build_tensors(path, key, build)
    t2, cached2 = _common.load_or_build_tensors(path, dict(key), build)
    assert (cached1, cached2) == (False, True)
    assert len(calls) == 1
    assert torch.equal(t1["train"], t2["train"])
    assert not list(path.parent.glob("*.tmp"))  # written atomically, no leftovers


def test_cache_rebuilds_on_other_key_or_corrupt_file(tmp_path: Path) -> None:
    calls = []

    def build() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"x": torch.full((2,), float(len(calls)))}

    path = tmp_path / "acts.pt"
    _common.load_or_build_tensors(path, {"n": 1}, build)
    t, cached = _common.load_or_build_tensors(path, {"n": 2}, build)  # different settings
    assert not cached and float(t["x"][0]) == 2.0
    path.write_bytes(b"not a torch file")
    t, cached = _common.load_or_build_tensors(path, {"n": 2}, build)
    assert not cached and float(t["x"][0]) == 3.0
    _, cached = _common.load_or_build_tensors(path, {"n": 2}, build)
    assert cached


def test_b2_defaults_share_one_lr_grid_and_keep_k_below_d_in() -> None:
    for data in b2.DATASETS:
        args = b2.parse_args(["--data", data])
        assert args.lrs_msae == args.lrs_topk == args.lrs
        if args.ladder is not None and args.d_in is not None:
            # the harder synthetic set compares only k < d_in, where FVU cannot collapse to ~0
            assert max(args.ladder) < args.d_in
    args = b2.parse_args(["--data", "clip-embed", "--lrs", "1e-3,2e-3", "--lrs-topk", "5e-3"])
    assert args.lrs_msae == [1e-3, 2e-3] and args.lrs_topk == [5e-3]
    quick = b2.parse_args(["--quick", "--data", "synthetic-overcomplete"])
    assert len(quick.lrs_msae) == 1 and quick.d_sae < b2.DEFAULTS["synthetic-overcomplete"]["d_sae"]
    # the original benchmark keeps its configuration
    orig = b2.parse_args([])
    assert (orig.data, orig.d_in, orig.d_sae, orig.k_start, orig.ladder) == (
        "synthetic", 64, 1024, 8, None)
