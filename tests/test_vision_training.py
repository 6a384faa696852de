"""Vision SAE training from SAELens-style configs on a tiny random OpenCLIP model.

* token selection: parsing, positions, round trip, errors;
* image sources: embedded digit scenes (deterministic per epoch, resumable), folders, iterables;
* the activation provider against independent computations (``forward_intermediates``, a full
  forward without ``stop_at_layer``), and ``stop_at_layer`` really skipping later blocks;
* the activation cache: round trip, resume offsets, atomic shards, refusal of other keys, and
  reuse across runs (bit-identical SAE, no model forwards for cached images);
* real (small) training of MSAE and TopK SAEs through ``SAETrainer``, held-out FVU vs untrained,
  metadata and ``SAE.load_from_disk``; the JSON config file + CLI; SIGINT -> checkpoint -> resume;
* bad inputs with the messages a user needs.

Every test pins torch to one thread: on a shared 2-core machine the 2-thread OpenMP pool makes
tiny matmuls pathologically slow (see tests/test_runners.py).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.model import CLIP, set_model_preprocess_cfg
from sae_lens import SAE
from sae_lens.constants import (
    RUNNER_CFG_FILENAME,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
    TRAINER_STATE_FILENAME,
)
from sae_lens.saes.topk_sae import TopKTrainingSAEConfig
from sae_lens.training._interruption import InterruptedException
from safetensors.torch import load_file

import msae_plugin
from msae_plugin.errors import (
    NonFiniteActivationsError,
    SAEModelMismatchError,
    UnknownArchitectureError,
    UnknownHookError,
    UnsupportedModelError,
)
from msae_plugin.msae.config import MSAETrainingSAEConfig
from msae_plugin.msae.sae import MSAE
from msae_plugin.msae.training_sae import MSAETrainingSAE
from msae_plugin.registration import HOOKED_MODELS
from msae_plugin.vision.activation_cache import (
    MANIFEST_FILENAME,
    ActivationCache,
    ActivationCacheError,
)
from msae_plugin.vision.activations import PROVIDER_STATE_FILENAME, ImageActivationProvider
from msae_plugin.vision.hooked_clip import HookedOpenCLIP
from msae_plugin.vision.image_sources import (
    DigitScenesSource,
    FolderImageSource,
    ImageSource,
    ImageSourceError,
    ImageSourceExhaustedError,
    open_image_source,
)
from msae_plugin.vision.token_selection import TokenSelection, TokenSelectionError
from msae_plugin.vision.training import (
    VisionConfigError,
    VisionSAERunnerConfig,
    VisionSAETrainingRunner,
)

msae_plugin.register()

D = 32  # d_model of the tiny model
N_CTX = 17  # 16 patches (16x16 image, 4x4 patches) + CLS
BATCH = 256
STAT_BUFFERS = ("input_mean", "input_scale", "input_stats_fitted")


# ---- fixtures and helpers -------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")


def tiny_clip(seed: int = 0, image_size: int = 16) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=image_size, patch_size=4, width=D, layers=2, head_width=16),
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    ).eval()


def tiny_model(seed: int = 0) -> HookedOpenCLIP:
    return HookedOpenCLIP(tiny_clip(seed), model_name="tiny-test").eval()


class TinyTestCLIP(HookedOpenCLIP):
    """A hooked-model class loadable by name (what a plugin would register)."""

    @classmethod
    def from_pretrained(cls, model_name, pretrained=None, device="cpu", dtype=torch.float32, **kw):
        model = cls(tiny_clip(kw.get("seed", 0)), model_name=model_name, pretrained=pretrained)
        return model.to(device=device, dtype=dtype).eval()


def msae_cfg(**kw) -> MSAETrainingSAEConfig:
    return MSAETrainingSAEConfig(**{"d_in": D, "d_sae": 128, "k_start": 4, **kw})


def runner_cfg(tmp_path: Path, sae=None, **kw) -> VisionSAERunnerConfig:
    base = dict(
        sae=sae if sae is not None else msae_cfg(),
        model_name="tiny-test",
        hook_name="blocks.0.hook_resid_post",
        dataset_path="msae-digits",
        dataset_kwargs={"images_per_epoch": 1024},
        token_selection="all",
        training_tokens=BATCH * 160,
        train_batch_size_tokens=BATCH,
        store_batch_size_images=16,
        n_batches_in_buffer=4,
        lr=2e-3,
        n_batches_for_norm_estimate=8,
        n_eval_batches=8,
        checkpoint_path=str(tmp_path / "ckpt"),
        output_path=str(tmp_path / "out"),
        seed=0,
        verbose=False,
    )
    base.update(kw)
    return VisionSAERunnerConfig(**base)


def known_images(n: int = 4, size: int = 16) -> torch.Tensor:
    """Deterministic, smooth, normalised-looking test images."""
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, 3, size, size, generator=g)


@torch.no_grad()
def independent_resid_post(clip: CLIP, images: torch.Tensor, block: int) -> torch.Tensor:
    """[B, n_ctx, d] output of block ``block`` straight from open_clip (no hooked wrapper)."""
    out = clip.visual.forward_intermediates(
        images, indices=[block], output_fmt="NLC", output_extra_tokens=True,
        intermediates_only=True,
    )
    return torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)


# ---- token selection ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, positions, text",
    [
        ("all", list(range(N_CTX)), "all"),
        ("CLS", [0], "cls"),
        ("patches", list(range(1, N_CTX)), "patches"),
        (0, [0], "0"),
        ("-1", [N_CTX - 1], "-1"),
        ("1:5", [1, 2, 3, 4], "1:5"),
        ("1::4", [1, 5, 9, 13], "1::4"),
        (":3", [0, 1, 2], ":3"),
        ("-4:", [13, 14, 15, 16], "-4:"),
    ],
)
def test_token_selection_positions_and_round_trip(spec, positions, text) -> None:
    sel = TokenSelection.parse(spec)
    assert sel.positions(N_CTX) == positions
    assert sel.tokens_per_image(N_CTX) == len(positions)
    assert str(sel) == text
    assert TokenSelection.parse(str(sel)) == sel
    acts = torch.randn(3, N_CTX, 2, 5)
    assert torch.equal(sel.apply(acts), acts[:, positions])


def test_token_selection_errors() -> None:
    with pytest.raises(TokenSelectionError) as e:
        TokenSelection.parse("3:80").validate(50)
    assert str(e.value).startswith(
        "token selection 3:80 is out of range: images have 50 tokens (CLS at 0, patches 1..49)"
    )
    with pytest.raises(TokenSelectionError, match=r"token selection 17 is out of range.*-17\.\.16"):
        TokenSelection.parse(17).validate(N_CTX)
    with pytest.raises(TokenSelectionError, match="out of range"):
        TokenSelection.parse("-18").validate(N_CTX)
    with pytest.raises(TokenSelectionError, match="selects no tokens"):
        TokenSelection.parse("5:5").validate(N_CTX)
    with pytest.raises(TokenSelectionError, match="step must be a positive"):
        TokenSelection.parse("0:5:0")
    with pytest.raises(TokenSelectionError, match="cannot parse token selection 'clss'"):
        TokenSelection.parse("clss")
    with pytest.raises(TokenSelectionError, match="slice bounds must be integers"):
        TokenSelection.parse("a:b")
    with pytest.raises(TokenSelectionError, match="string or an int"):
        TokenSelection.parse(True)  # type: ignore[arg-type]


# ---- image sources --------------------------------------------------------------------------
def test_digit_scenes_source_is_deterministic_fresh_per_epoch_and_resumable() -> None:
    from msae_plugin.embedded.dataset import IMAGE_MEAN, IMAGE_STD, normalize

    clip = tiny_clip(image_size=32)
    set_model_preprocess_cfg(clip, {"mean": IMAGE_MEAN, "std": IMAGE_STD})
    model = HookedOpenCLIP(clip, model_name="tiny-32")
    src = open_image_source("msae-digits", seed=3, images_per_epoch=40, chunk_size=16)
    assert isinstance(src, DigitScenesSource)

    def take(source: ImageSource, n: int, start: int = 0) -> torch.Tensor:
        out, got = [], 0
        for b in source.batches(7, model, start_image=start):
            out.append(b)
            got += b.shape[0]
            if got >= n:
                break
        return torch.cat(out)[:n]

    stream = take(src, 100)
    assert stream.shape == (100, 3, 32, 32)
    same = DigitScenesSource(seed=3, images_per_epoch=40, chunk_size=16)
    other_seed = DigitScenesSource(seed=4, images_per_epoch=40, chunk_size=16)
    assert torch.equal(stream, take(same, 100))
    assert not torch.equal(stream, take(other_seed, 100))
    assert not torch.allclose(stream[:40], stream[40:80])  # epoch 1 renders new scenes
    for start in (5, 16, 40, 57):  # resuming mid-chunk, on a chunk, on an epoch boundary
        assert torch.equal(take(src, 100 - start, start=start), stream[start:])
    # normalised exactly as the embedded dataset's own normalize() when the model carries its stats
    raw = src._chunk(0, 0)
    assert torch.allclose(stream[:16], normalize(raw), atol=1e-6)


def test_folder_and_iterable_sources(tmp_path: Path) -> None:
    from PIL import Image

    model = tiny_model()
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8) for _ in range(5)]
    (tmp_path / "sub").mkdir()
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / ("sub" if i % 2 else ".") / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")

    src = open_image_source(str(tmp_path), seed=1)
    assert isinstance(src, FolderImageSource) and src.epoch_size == 5
    batches = src.batches(2, model)
    first = [next(batches) for _ in range(3)]
    assert [b.shape[0] for b in first] == [2, 2, 2]  # exact batches, across the epoch boundary
    got = torch.cat(first)[:5]  # one epoch
    order = [int(p.stem[3:]) for p in src.order(0)]
    assert sorted(order) == list(range(5))
    expected = model.preprocess([Image.fromarray(arrays[i]) for i in order])
    assert torch.allclose(got, expected, atol=1e-6)
    assert src.order(0) != src.order(1) or src.order(1) != src.order(2)  # reshuffled per epoch

    # in-memory: ready float tensors pass through untouched, uint8 ones are preprocessed
    ready = known_images(3)
    listed = open_image_source([ready[0], ready[1:]])
    assert listed.epoch_size == 3
    batch = next(listed.batches(8, model))  # a full batch: the list repeats in epochs
    assert torch.equal(batch[:6], torch.cat([ready, ready])) and batch.shape[0] == 8
    raw = torch.from_numpy(arrays[0]).permute(2, 0, 1)
    assert torch.allclose(next(open_image_source([raw]).batches(1, model)), model.preprocess(raw))
    # a one-shot generator is read once
    gen = open_image_source(t for t in ready)
    assert sum(b.shape[0] for b in gen.batches(2, model)) == 3


# ---- the activation provider ------------------------------------------------------------------
def test_provider_tokens_match_independent_computation() -> None:
    torch.manual_seed(0)
    clip = tiny_clip()
    model = HookedOpenCLIP(clip, model_name="tiny-test")
    images = known_images(4)
    ref_resid = independent_resid_post(clip, images, block=0)
    assert ref_resid.shape == (4, N_CTX, D)

    for selection, positions in (("all", list(range(N_CTX))), ("patches", list(range(1, 17))),
                                 ("cls", [0]), ("2:12:3", [2, 5, 8, 11])):
        p = ImageActivationProvider(
            model, "blocks.0.hook_resid_post", [images], token_selection=selection,
            store_batch_size_images=3, train_batch_size_tokens=len(positions),
            n_batches_in_buffer=1,
            mix_fraction=0.0,
        )
        assert p.tokens_per_image == len(positions) and p.d_in == D
        assert p.stop_at_layer == 1
        expected = ref_resid[:, positions].reshape(-1, D)
        assert torch.allclose(p.activations(images), expected, atol=1e-5)
        # the iterator: one image per batch here, in stream order (mix_fraction=0: no shuffling)
        got = torch.cat([next(p) for _ in range(4)])
        assert torch.allclose(got, expected, atol=1e-5)

    # attention heads are flattened; compare with a full forward (no stop_at_layer)
    _, cache = model.run_with_cache(images, names_filter=["blocks.1.attn.hook_z"])
    z_ref = cache["blocks.1.attn.hook_z"]  # [B, L, H, d_head]
    assert z_ref.shape == (4, N_CTX, 2, 16)
    p = ImageActivationProvider(model, "blocks.1.attn.hook_z", [images], token_selection="patches",
                                train_batch_size_tokens=64, n_batches_in_buffer=2)
    assert p.d_in == 32 == model.activation_width("blocks.1.attn.hook_z")
    assert torch.allclose(p.activations(images), z_ref[:, 1:].reshape(-1, 32), atol=1e-6)
    # shuffled batches have the right shape and are permutations of the same tokens
    p = ImageActivationProvider(model, "blocks.1.mlp.hook_post", [images] * 4,
                                store_batch_size_images=4, train_batch_size_tokens=68,
                                n_batches_in_buffer=2)
    batch = next(p)
    assert batch.shape == (68, 128) and batch.dtype == torch.float32
    _, cache = model.run_with_cache(images, names_filter=["blocks.1.mlp.hook_post"])
    ref_rows = cache["blocks.1.mlp.hook_post"].reshape(-1, 128)
    dist = torch.cdist(batch, ref_rows, compute_mode="donot_use_mm_for_euclid_dist")
    assert dist.min(dim=1).values.max() < 1e-5  # every served token is one of the images' tokens
    picked = dist.argmin(dim=1)
    assert not torch.equal(picked, picked.sort().values)  # ...shuffled by the mixing buffer

    # pooled and patch-only hooks
    p = ImageActivationProvider(model, "hook_image_embed", [images], train_batch_size_tokens=4)
    assert p.layout == "pooled" and p.tokens_per_image == 1
    assert torch.allclose(p.activations(images), clip.encode_image(images), atol=1e-5)
    p = ImageActivationProvider(model, "hook_embed", [images], token_selection="patches",
                                train_batch_size_tokens=16)
    assert p.layout == "patches" and p.tokens_per_image == 16 and p.stop_at_layer == 0


def test_stop_at_layer_skips_later_blocks() -> None:
    model = tiny_model()
    calls = {0: 0, 1: 0, "ln_post": 0}
    model.blocks[0].register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    model.blocks[1].register_forward_hook(lambda *a: calls.__setitem__(1, calls[1] + 1))
    model.clip.visual.ln_post.register_forward_hook(
        lambda *a: calls.__setitem__("ln_post", calls["ln_post"] + 1)
    )
    p = ImageActivationProvider(model, "blocks.0.hook_mlp_out", [known_images(4)],
                                store_batch_size_images=2, train_batch_size_tokens=34,
                                n_batches_in_buffer=1)
    for _ in range(4):
        next(p)
    # the shape probe + one forward per batch (2 images = 34 tokens = one training batch; the
    # 4-image list repeats in epochs)
    assert calls[0] == 5
    assert calls[1] == 0 and calls["ln_post"] == 0
    # control: a hook in block 1 does run block 1 (so the counter above could have fired)
    ImageActivationProvider(model, "blocks.1.hook_resid_post", [known_images(1)])
    assert calls[0] == 6 and calls[1] == 1 and calls["ln_post"] == 0
    # and a hook after the last block runs the whole tower
    ImageActivationProvider(model, "hook_ln_post", [known_images(1)])
    assert calls[1] == 2 and calls["ln_post"] == 1


def test_nonfinite_activations_are_refused() -> None:
    model = tiny_model()
    with torch.no_grad():
        model.clip.visual.transformer.resblocks[0].mlp.c_fc.weight[0, 0] = float("nan")
    p = ImageActivationProvider(model, "blocks.0.hook_mlp_out", [known_images(2)],
                                store_batch_size_images=2, train_batch_size_tokens=8,
                                n_batches_in_buffer=1)
    with pytest.raises(NonFiniteActivationsError,
                       match=r"'blocks.0.hook_mlp_out' for images 0\.\.1 of the stream contain "
                             r"\d+ NaN"):
        next(p)


# ---- the activation cache ---------------------------------------------------------------------
def test_activation_cache_round_trip_resume_and_refusal(tmp_path: Path) -> None:
    model = tiny_model()
    key = dict(model_name="tiny-test", pretrained=None, hook_name="blocks.1.hook_resid_post",
               token_selection="patches", image_size=[16, 16], n_ctx=N_CTX, tokens_per_image=16,
               d_in=D, dtype="float32", dataset_path="msae-digits")
    cache = ActivationCache.open(tmp_path / "c", key)
    src = DigitScenesSource(seed=0, images_per_epoch=64, chunk_size=32)
    p = ImageActivationProvider(model, "blocks.1.hook_resid_post", src, token_selection="patches",
                                store_batch_size_images=8, train_batch_size_tokens=128,
                                n_batches_in_buffer=2, cache=cache, shard_size_tokens=300)
    for _ in range(6):
        next(p)
    p.flush_cache()
    n_images = p.images_consumed
    assert cache.n_images == n_images and cache.n_tokens == 16 * n_images
    assert len(cache.manifest["shards"]) >= 3  # 300-token shards = 24 images each
    assert not list((tmp_path / "c").glob("*.tmp")) and not list((tmp_path / "c").glob(".*"))

    # the cached tokens are exactly the activations of the first n_images images of the stream
    ref = torch.cat([p.activations(b) for b in
                     _take_images(src.batches(8, model), n_images)])
    reopened = ActivationCache.open(tmp_path / "c", key)
    assert torch.equal(reopened.read_all(), ref)
    manifest = json.loads((tmp_path / "c" / MANIFEST_FILENAME).read_text())
    assert manifest["n_tokens"] == ref.shape[0] and manifest["hook_name"] == key["hook_name"]
    # reading from an image offset (a resumed run) gives the same tail
    for start in (0, 5, 24, n_images - 1):
        tail = torch.cat([t for t, _ in reopened.iter_shards(start)])
        assert torch.equal(tail, ref[16 * start:])

    # a provider on the cache reads it first, then continues computing (and appending)
    p2 = ImageActivationProvider(model, "blocks.1.hook_resid_post", src, token_selection="patches",
                                 store_batch_size_images=8, train_batch_size_tokens=128,
                                 n_batches_in_buffer=2, cache=reopened, start_image=3)
    blocks = p2.token_batches()
    first = next(blocks)
    assert torch.equal(first, ref[16 * 3: 16 * 11])
    assert p2.images_consumed == 11

    for field, value in (("hook_name", "blocks.0.hook_resid_post"), ("token_selection", "all"),
                         ("model_name", "other-model"), ("pretrained", "openai")):
        with pytest.raises(ActivationCacheError, match=f"{field}: cache has .*this run uses"):
            ActivationCache.open(tmp_path / "c", {**key, field: value})
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.bin").write_bytes(b"1")
    with pytest.raises(ActivationCacheError, match="is not an activation cache"):
        ActivationCache.open(tmp_path / "junk", key)
    (tmp_path / "c" / "shard_00001.safetensors").unlink()
    with pytest.raises(ActivationCacheError, match="shard_00001.safetensors .* is missing"):
        ActivationCache.open(tmp_path / "c", key)


def _take_images(batches: Iterator[torch.Tensor], n: int) -> list[torch.Tensor]:
    out, got = [], 0
    for b in batches:
        out.append(b[: n - got])
        got += out[-1].shape[0]
        if got == n:
            return out
    raise AssertionError("stream too short")


def test_cached_activations_are_reused_across_runs(tmp_path: Path) -> None:
    model = tiny_model()
    seen: list[int] = []
    model.blocks[0].register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))

    def run(out: str, **kw) -> tuple[VisionSAETrainingRunner, dict]:
        seen.clear()
        cfg = runner_cfg(tmp_path, use_cached_activations=True,
                         cached_activations_path=str(tmp_path / "acts"),
                         output_path=str(tmp_path / out),
                         checkpoint_path=None, training_tokens=BATCH * 60,
                         dataset_kwargs={"images_per_epoch": 1000}, **kw)
        r = VisionSAETrainingRunner(cfg, override_model=model)
        r.provider.shard_size_tokens = 2000
        sae = r.run()
        return r, {k: v.clone() for k, v in sae.state_dict().items()}

    r1, sd1 = run("out1")
    n_forwarded = sum(seen)
    assert n_forwarded == 1 + r1.provider.images_consumed  # the shape probe + every image
    assert r1.provider.images_consumed > 1000  # crossed an epoch boundary (1000 % 16 != 0)
    manifest = json.loads((tmp_path / "acts" / MANIFEST_FILENAME).read_text())
    assert manifest["n_images"] == r1.provider.images_consumed
    assert len(manifest["shards"]) > 1

    r2, sd2 = run("out2")
    assert sum(seen) == 1  # only the shape probe: every training token came from the cache
    assert r2.provider.images_consumed == r1.provider.images_consumed
    for name in sd1:  # same seeds, same tokens in the same order -> the same SAE, bit for bit
        assert torch.equal(sd1[name], sd2[name]), name

    other = runner_cfg(tmp_path, use_cached_activations=True, token_selection="patches",
                       cached_activations_path=str(tmp_path / "acts"))
    with pytest.raises(ActivationCacheError,
                       match="token_selection: cache has 'all', this run uses 'patches'"):
        VisionSAETrainingRunner(other, override_model=model)


# ---- training -------------------------------------------------------------------------------
@torch.no_grad()
def relu_fvu(runner: VisionSAETrainingRunner, sae) -> float:
    return runner.evaluate(sae)["relu"]["reconstruction_quality"]["fvu"]


@pytest.mark.parametrize("arch", ["msae", "topk"])
def test_training_reduces_heldout_fvu_and_saves_loadable_sae(tmp_path: Path, arch: str) -> None:
    model = tiny_model()
    sae_cfg = msae_cfg() if arch == "msae" else TopKTrainingSAEConfig(d_in=D, d_sae=128, k=8)
    cfg = runner_cfg(tmp_path, sae=sae_cfg, hook_name="blocks.1.hook_resid_post",
                     token_selection="patches", n_checkpoints=1)
    runner = VisionSAETrainingRunner(cfg, override_model=model)
    x_eval, held_out = runner.eval_activations()
    assert held_out and x_eval.shape == (8 * 16 * 16, D)  # test-split digit scenes, 16 patches
    untrained = type(runner.sae)(runner.sae.cfg)
    untrained.load_state_dict(runner.sae.state_dict())
    if arch == "msae":  # a fair baseline: statistics fitted on the evaluation set itself
        untrained.fit_input_statistics(x_eval)
    fvu_untrained = relu_fvu(runner, untrained)

    sae = runner.run()
    assert runner.trainer.n_training_samples == cfg.training_tokens
    results = runner.evaluate(sae)
    fvu_trained = results["relu"]["reconstruction_quality"]["fvu"]
    print(f"\n{arch}: held-out FVU untrained {fvu_untrained:.3f} -> trained {fvu_trained:.4f}, "
          f"L0 {results['relu']['sparsity']['l0']:.1f}")
    assert fvu_trained < 0.3 * fvu_untrained
    assert fvu_trained < 0.15
    assert results["relu"]["reconstruction_quality"]["cossim"] > 0.9
    if arch == "topk":
        assert results["relu"]["sparsity"]["l0"] <= 8
    else:
        assert bool(sae.input_stats_fitted)
        assert results["k=4"]["reconstruction_quality"]["fvu"] < fvu_untrained

    out = Path(cfg.output_path)
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME, RUNNER_CFG_FILENAME):
        assert (out / name).is_file(), name
    loaded = SAE.load_from_disk(out)
    assert loaded.cfg.architecture() == arch
    if arch == "msae":
        assert type(loaded) is MSAE
    meta = loaded.cfg.metadata
    assert meta.model_name == "tiny-test" and meta.model_class_name == "HookedOpenCLIP"
    assert meta.hook_name == "blocks.1.hook_resid_post" and meta.hook_head_index is None
    assert meta.context_size == 16 and meta.token_selection == "patches"
    assert meta.image_size == [16, 16] and meta.patch_size == [4, 4] and meta.n_ctx == N_CTX
    assert meta.dataset_path == "msae-digits" and meta.pretrained is None
    with torch.no_grad():
        assert torch.allclose(loaded.decode(loaded.encode(x_eval)), sae.decode(sae.encode(x_eval)),
                              atol=1e-6)
    # the loaded SAE splices back into the hooked model at the hook it was trained on
    model.check_sae(loaded)
    saved_runner_cfg = json.loads((out / RUNNER_CFG_FILENAME).read_text())
    again = VisionSAERunnerConfig.from_dict(saved_runner_cfg)
    assert again.to_dict() == saved_runner_cfg
    assert again.sae == cfg.sae
    ckpts = [p for p in Path(cfg.checkpoint_path).iterdir() if p.is_dir()]
    assert len(ckpts) == 1 and (ckpts[0] / PROVIDER_STATE_FILENAME).is_file()


def test_wandb_logging_runs_the_vision_evaluator(tmp_path: Path, monkeypatch) -> None:
    """W&B on (in WANDB_MODE=disabled): SAETrainer calls our evaluator on held-out tokens."""
    from sae_lens import LoggingConfig

    from msae_plugin.vision import training

    results: list[dict] = []
    orig = training.VisionSAEEvaluator.__call__

    def spy(self, *args):
        results.append(orig(self, *args))
        return results[-1]

    monkeypatch.setattr(training.VisionSAEEvaluator, "__call__", spy)
    cfg = runner_cfg(tmp_path, training_tokens=BATCH * 40, n_eval_batches=2,
                     logger=LoggingConfig(log_to_wandb=True, wandb_log_frequency=5,
                                          eval_every_n_wandb_logs=2))
    VisionSAETrainingRunner(cfg, override_model=tiny_model()).run()
    assert len(results) == 4  # every 10 of 40 steps
    fvus = [r["eval/relu/reconstruction_quality/fvu"] for r in results]
    assert all(0 <= f < 1 for f in fvus) and fvus[-1] < fvus[0]
    assert {"eval/k=4/sparsity/l0", "eval/relu/sparsity/dead_fraction"} <= set(results[0])


def test_config_file_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from msae_plugin.cli import main

    monkeypatch.setitem(HOOKED_MODELS, "TinyTestCLIP", TinyTestCLIP)
    config = {
        "sae": {"architecture": "msae", "d_in": D, "d_sae": 128, "k_start": 4},
        "model_name": "tiny-test",
        "model_class_name": "TinyTestCLIP",
        "model_from_pretrained_kwargs": {"seed": 0},
        "hook_name": "blocks.1.hook_resid_post",
        "dataset_path": "msae-digits",
        "dataset_kwargs": {"images_per_epoch": 1024},
        "token_selection": "all",
        "training_tokens": BATCH * 400,
        "train_batch_size_tokens": BATCH,
        "store_batch_size_images": 16,
        "n_batches_in_buffer": 4,
        "lr": 1e-3,
        "n_batches_for_norm_estimate": 8,
        "n_eval_batches": 4,
        "checkpoint_path": str(tmp_path / "ckpt"),
        "output_path": str(tmp_path / "out"),
        "logger": {"log_to_wandb": False},
        "verbose": False,
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config))
    cfg = VisionSAERunnerConfig.from_file(path, overrides=["lr=2e-3", "sae.k_start=8"])
    assert isinstance(cfg.sae, MSAETrainingSAEConfig) and cfg.sae.ladder == (8, 16, 32, 64, 128)
    assert cfg.lr == 2e-3 and cfg.lr_end == pytest.approx(2e-4)
    assert cfg.checkpoint_path == str(tmp_path / "ckpt")  # kept as written (SAELens from_dict)
    tc = cfg.to_sae_trainer_config()
    assert tc.total_training_samples == BATCH * 400
    assert (tc.train_batch_size_samples, tc.lr) == (BATCH, 2e-3)
    assert tc.logger.log_to_wandb is False
    import yaml  # a declared runtime dependency: if it is missing this must fail, not skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    assert VisionSAERunnerConfig.from_file(tmp_path / "cfg.yaml").to_dict()["sae"] == \
        VisionSAERunnerConfig.from_file(path).to_dict()["sae"]

    rc = main(["train", str(path), "--override", "training_tokens=25600",
               "--override", "sae.k_start=8"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert f"saved SAE (msae, d_in={D}, d_sae=128) to {tmp_path / 'out'}" in printed
    assert "held-out images at blocks.1.hook_resid_post" in printed
    rows = {line.split()[0]: line.split() for line in printed.splitlines() if line.strip()}
    assert set(rows) >= {"k=8", "k=16", "relu"}
    fvu_relu = float(rows["relu"][3])
    assert 0 <= fvu_relu < 0.2
    loaded = SAE.load_from_disk(tmp_path / "out")
    assert loaded.cfg.ladder == (8, 16, 32, 64, 128)
    assert loaded.cfg.metadata.model_class_name == "TinyTestCLIP"

    # errors are reported on stderr (exit 2), not raised
    assert main(["train", str(path), "--override", "hook_name=blocks.1.hook_resid_pots"]) == 2
    printed = capsys.readouterr().err
    assert "error: unknown hook name 'blocks.1.hook_resid_pots'" in printed
    assert "Did you mean 'blocks.1.hook_resid_post'?" in printed
    assert main(["train", str(path), "--override", "learning_rate=1"]) == 2
    assert "unknown config field 'learning_rate'" in capsys.readouterr().err


def test_example_config_parses() -> None:
    root = Path(__file__).resolve().parents[1]
    cfg = VisionSAERunnerConfig.from_file(root / "configs" / "vision_msae_tiny.json")
    assert cfg.sae.architecture() == "msae" and cfg.model_name == "msae-tiny-clip"
    assert cfg.hook_name == "blocks.2.hook_resid_post" and cfg.sae.d_in == 96
    assert cfg.logger.log_to_wandb is False


# ---- interruption and resume ------------------------------------------------------------------
class _SigintAfter(DigitScenesSource):
    """The config's digit stream, which sends this process SIGINT after ``n`` batches."""

    def __init__(self, n: int, **kw) -> None:
        super().__init__(**kw)
        self.left = n

    def _epoch(self, epoch, start, batch_size):
        for b in super()._epoch(epoch, start, batch_size):
            self.left -= 1
            if self.left == 0:
                signal.raise_signal(signal.SIGINT)
            yield b


def test_sigint_saves_a_checkpoint_and_the_run_resumes(tmp_path: Path) -> None:
    model = tiny_model()
    total = BATCH * 160
    cfg = runner_cfg(tmp_path, training_tokens=total)
    runner = VisionSAETrainingRunner(
        cfg, override_model=model, override_images=_SigintAfter(60, seed=0, images_per_epoch=1024)
    )
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(InterruptedException):
        runner.run()
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    ckpt = runner.interrupted_checkpoint
    assert ckpt is not None and ckpt.parent == Path(cfg.checkpoint_path)
    n_done = int(ckpt.name)
    assert 0 < n_done < total and n_done == runner.trainer.n_training_samples
    assert runner.trainer.n_training_steps * BATCH == n_done  # stopped between two steps
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, TRAINER_STATE_FILENAME,
                 PROVIDER_STATE_FILENAME, RUNNER_CFG_FILENAME):
        assert (ckpt / name).is_file(), name
    state = json.loads((ckpt / PROVIDER_STATE_FILENAME).read_text())
    assert state["images_consumed"] == runner.provider.images_consumed > 0
    on_disk = load_file(str(ckpt / SAE_WEIGHTS_FILENAME))
    ckpt_cfg = json.loads((ckpt / SAE_CFG_FILENAME).read_text())
    assert ckpt_cfg["metadata"]["hook_name"] == cfg.hook_name

    cfg2 = runner_cfg(tmp_path, training_tokens=total, output_path=str(tmp_path / "out2"))
    resumed = VisionSAETrainingRunner(cfg2, override_model=model, resume_from_checkpoint=ckpt)
    starts: list[int] = []
    orig = resumed.provider.source.batches

    def recording(batch_size, model_, start_image=0):
        starts.append(start_image)
        return orig(batch_size, model_, start_image=start_image)

    resumed.provider.source.batches = recording  # type: ignore[method-assign]
    sae = resumed.run()
    assert starts[0] == state["images_consumed"]  # continues after the last image read
    assert resumed.trainer.n_training_samples == total
    assert resumed.trainer.lr_scheduler.last_epoch == total // BATCH
    assert isinstance(sae, MSAETrainingSAE)
    for name in STAT_BUFFERS:  # restored, not refitted on the resumed run's first batch
        assert torch.equal(getattr(sae, name), on_disk[name]), name
    assert not torch.equal(sae.W_dec, on_disk["W_dec"])  # and it trained further
    assert relu_fvu(resumed, sae) < 0.15
    assert type(SAE.load_from_disk(tmp_path / "out2")) is MSAE

    other = runner_cfg(tmp_path, hook_name="blocks.1.hook_resid_post")
    with pytest.raises(VisionConfigError, match="hook_name: checkpoint 'blocks.0.hook_resid_post'"):
        VisionSAETrainingRunner(other, override_model=model, resume_from_checkpoint=ckpt)


def test_cli_interrupt_prints_resume_command_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from msae_plugin.cli import main
    from msae_plugin.vision.image_sources import IMAGE_DATASETS

    monkeypatch.setitem(HOOKED_MODELS, "TinyTestCLIP", TinyTestCLIP)
    monkeypatch.setitem(
        IMAGE_DATASETS, "sigint-digits",
        lambda seed=0, images_per_epoch=1024: _SigintAfter(40, seed=seed,
                                                           images_per_epoch=images_per_epoch),
    )
    config = {
        "sae": {"architecture": "msae", "d_in": D, "d_sae": 128, "k_start": 4},
        "model_name": "tiny-test", "model_class_name": "TinyTestCLIP",
        "hook_name": "blocks.0.hook_resid_post", "dataset_path": "sigint-digits",
        "dataset_kwargs": {"images_per_epoch": 1024}, "training_tokens": BATCH * 100,
        "train_batch_size_tokens": BATCH, "store_batch_size_images": 16,
        "n_batches_in_buffer": 4, "lr": 2e-3, "n_batches_for_norm_estimate": 4,
        "n_eval_batches": 2, "checkpoint_path": str(tmp_path / "ckpt"),
        "output_path": str(tmp_path / "out"), "verbose": False,
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config))
    previous = signal.getsignal(signal.SIGINT)
    assert main(["train", str(path)]) == 130
    assert signal.getsignal(signal.SIGINT) is previous
    printed = capsys.readouterr().out
    ckpts = [p for p in (tmp_path / "ckpt").iterdir() if p.is_dir()]
    assert len(ckpts) == 1 and 0 < int(ckpts[0].name) < BATCH * 100
    assert f"interrupted; checkpoint saved to {ckpts[0]}" in printed
    assert f"resume with: msae train {path} --resume {ckpts[0]}" in printed
    assert not (tmp_path / "out" / SAE_CFG_FILENAME).exists()  # created up front, still empty

    # the same stream without the signal: the run finishes from the checkpoint
    from msae_plugin.vision.training_checkpoints import VisionSAETrainer

    loaded_from: list[str] = []
    orig_load = VisionSAETrainer.load_trainer_state
    monkeypatch.setattr(VisionSAETrainer, "load_trainer_state",
                        lambda self, p: (loaded_from.append(str(p)), orig_load(self, p))[1])
    assert main(["train", str(path), "--resume", str(ckpts[0]),
                 "--override", "dataset_path=msae-digits"]) == 0
    printed = capsys.readouterr().out
    assert loaded_from == [str(ckpts[0])]
    assert f"to {tmp_path / 'out'}" in printed and "relu" in printed
    state = torch.load(tmp_path / "ckpt" / ckpts[0].name / TRAINER_STATE_FILENAME)
    assert state["n_training_samples"] == int(ckpts[0].name)
    assert SAE.load_from_disk(tmp_path / "out").cfg.metadata.hook_name == config["hook_name"]


# ---- bad inputs -------------------------------------------------------------------------------
def test_bad_inputs_have_clear_errors(tmp_path: Path) -> None:
    model = tiny_model()
    with pytest.raises(SAEModelMismatchError) as e:
        VisionSAETrainingRunner(runner_cfg(tmp_path, sae=msae_cfg(d_in=64)), override_model=model)
    msg = str(e.value)
    assert "sae.d_in=64" in msg and "width 32" in msg and "Set sae.d_in to 32" in msg
    with pytest.raises(SAEModelMismatchError, match="width 128 at 'blocks.0.mlp.hook_pre'"):
        VisionSAETrainingRunner(runner_cfg(tmp_path, hook_name="blocks.0.mlp.hook_pre"),
                                override_model=model)
    with pytest.raises(UnknownHookError, match="Did you mean 'blocks.0.hook_resid_post'"):
        VisionSAETrainingRunner(runner_cfg(tmp_path, hook_name="blocks.0.hook_resid_pots"),
                                override_model=model)
    with pytest.raises(UnknownHookError, match="text-tower hook"):
        VisionSAETrainingRunner(runner_cfg(tmp_path, hook_name="text.blocks.0.hook_resid_post"),
                                override_model=model)
    with pytest.raises(UnknownHookError, match="attention scores/patterns"):
        VisionSAETrainingRunner(runner_cfg(tmp_path, hook_name="blocks.0.attn.hook_pattern"),
                                override_model=model)
    with pytest.raises(TokenSelectionError,
                       match=r"token selection 0:40 is out of range: images have 17 tokens"):
        VisionSAETrainingRunner(runner_cfg(tmp_path, token_selection="0:40"), override_model=model)
    with pytest.raises(TokenSelectionError, match="use token_selection='all'"):
        ImageActivationProvider(model, "hook_image_embed", [known_images(1)], token_selection="cls")

    with pytest.raises(ImageSourceError, match="empty image list"):
        VisionSAETrainingRunner(runner_cfg(tmp_path), override_model=model, override_images=[])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(ImageSourceError, match="contains no image files"):
        VisionSAETrainingRunner(runner_cfg(tmp_path, dataset_path=str(empty), dataset_kwargs={}),
                                override_model=model)
    with pytest.raises(ImageSourceError, match="does not accept these dataset_kwargs.*takes: seed"):
        VisionSAETrainingRunner(runner_cfg(tmp_path, dataset_kwargs={"n_images": 5}),
                                override_model=model)
    with pytest.raises(ImageSourceError,
                       match="unknown image dataset 'msae-digit'.*Did you mean 'msae-digits'"):
        VisionSAETrainingRunner(runner_cfg(tmp_path, dataset_path="msae-digit"),
                                override_model=model)
    gen = ImageActivationProvider(model, "blocks.0.hook_resid_post", (t for t in known_images(2)),
                                  train_batch_size_tokens=34, n_batches_in_buffer=1)
    next(gen)
    with pytest.raises(ImageSourceExhaustedError, match="ran out after 2 images"):
        next(gen)
        next(gen)

    with pytest.raises(UnsupportedModelError, match="Did you mean 'HookedOpenCLIP'"):
        runner_cfg(tmp_path, model_class_name="HookedOpenClip")
    with pytest.raises(VisionConfigError, match="sae.dtype='float32' differs from dtype='float16'"):
        runner_cfg(tmp_path, dtype="float16")
    with pytest.raises(VisionConfigError, match="less than one batch"):
        runner_cfg(tmp_path, training_tokens=10)
    base = {"sae": {"architecture": "msae", "d_in": D, "d_sae": 128}}
    with pytest.raises(UnknownArchitectureError, match="Did you mean 'msae'"):
        VisionSAERunnerConfig.from_dict({"sae": {"architecture": "mase", "d_in": D, "d_sae": 64}})
    with pytest.raises(VisionConfigError, match="use token_selection instead of context_size"):
        VisionSAERunnerConfig.from_dict({**base, "context_size": 50})
    with pytest.raises(VisionConfigError, match="unknown field 'k_strat'.*Did you mean 'k_start'"):
        VisionSAERunnerConfig.from_dict({"sae": {**base["sae"], "k_strat": 4}})
    with pytest.raises(VisionConfigError, match=r"sae is missing \['d_in'\]"):
        VisionSAERunnerConfig.from_dict({"sae": {"architecture": "msae", "d_sae": 128}})
    with pytest.raises(VisionConfigError, match="unknown logger field 'log_to_wandbb'"):
        VisionSAERunnerConfig.from_dict({**base, "logger": {"log_to_wandbb": False}})


@pytest.mark.slow
def test_example_config_trains_on_the_embedded_model(tmp_path: Path) -> None:
    """configs/vision_msae_tiny.json, shortened, on msae-tiny-clip (needs its shipped weights)."""
    from msae_plugin.embedded.model import default_weights_path

    assert default_weights_path().is_file(), "the shipped msae-tiny-clip weights are missing"
    root = Path(__file__).resolve().parents[1]
    cfg = VisionSAERunnerConfig.from_file(
        root / "configs" / "vision_msae_tiny.json",
        overrides=[
            f"training_tokens={4096 * 60}", "n_checkpoints=0", "verbose=false",
            f"checkpoint_path={tmp_path / 'ckpt'}", f"output_path={tmp_path / 'out'}",
        ],
    )
    runner = VisionSAETrainingRunner(cfg)
    assert runner.model.cfg.pretrained == "embedded" and runner.provider.d_in == 96
    x_eval, held_out = runner.eval_activations()
    assert held_out
    untrained = MSAETrainingSAE(runner.sae.cfg)
    untrained.load_state_dict(runner.sae.state_dict())
    untrained.fit_input_statistics(x_eval)
    fvu_untrained = relu_fvu(runner, untrained)
    sae = runner.run()
    fvu_trained = relu_fvu(runner, sae)
    print(f"\nmsae-tiny-clip {cfg.hook_name}: FVU {fvu_untrained:.3f} -> {fvu_trained:.4f}")
    assert fvu_trained < 0.5 * fvu_untrained
    loaded = SAE.load_from_disk(tmp_path / "out")
    assert loaded.cfg.metadata.model_name == "msae-tiny-clip"
    assert loaded.cfg.metadata.context_size == 65 and loaded.cfg.metadata.pretrained == "embedded"
