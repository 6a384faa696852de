"""On the embedded CLIP with a really trained MSAE: ablating the latents most associated with a
digit lowers that digit's zero-shot logit more than ablating random latents; zero-shot accuracy
kept agrees with an independent computation."""

from __future__ import annotations

import pytest
import torch

from msae_plugin.embedded.dataset import make_digit_scenes, normalize
from msae_plugin.embedded.zero_shot import build_zero_shot_classifier, zero_shot_accuracy
from msae_plugin.vision.evaluation import zero_shot_accuracy_kept
from msae_plugin.vision.hooked_clip import HookedOpenCLIP
from msae_plugin.vision.steering import (
    LatentEdit,
    class_latents,
    image_latent_means,
    steered_logits,
)
from msae_plugin.vision.training import VisionSAERunnerConfig, VisionSAETrainingRunner

HOOK = "blocks.2.hook_resid_post"
SLOW = pytest.mark.slow  # the tests that train an MSAE on the embedded model (~1 min)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip")
    out = tmp_path_factory.mktemp("vision_msae")
    cfg = VisionSAERunnerConfig.from_dict(
        {
            "sae": {"architecture": "msae", "d_in": model.cfg.d_model, "d_sae": 512,
                    "k_start": 8, "weighting": "RW"},
            "hook_name": HOOK,
            "dataset_kwargs": {"images_per_epoch": 4096},
            "token_selection": "all",
            "training_tokens": 4096 * 80,
            "train_batch_size_tokens": 4096,
            "store_batch_size_images": 128,
            "n_batches_in_buffer": 8,
            "lr": 1e-3,
            "n_batches_for_norm_estimate": 4,
            "n_eval_batches": 1,
            "checkpoint_path": str(out / "ckpt"),
            "output_path": str(out / "sae"),
            "verbose": False,
        }
    )
    VisionSAETrainingRunner(cfg, override_model=model).run()
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(out / "sae")).eval()
    classifier = build_zero_shot_classifier(model, model.tokenizer)
    return model, sae, classifier


def scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = make_digit_scenes(n, split="test", seed=seed)
    return normalize(s.images), s.labels


@SLOW
def test_class_latents_matter_more_than_random_latents(setup) -> None:
    model, sae, classifier = setup
    sae.set_default_k(32)
    sel_images, sel_labels = scenes(400, seed=11)  # choose latents on one sample ...
    ev_images, ev_labels = scenes(400, seed=12)  # ... measure on another
    means = image_latent_means(model, sae, sel_images)
    alive = torch.nonzero(means.sum(0) > 0).flatten()
    base = steered_logits(model, ev_images, sae, classifier)
    n, wins, class_drops, random_drops = 16, 0, [], []
    g = torch.Generator().manual_seed(0)
    for digit in range(10):
        mask = ev_labels == digit
        top = class_latents(means, sel_labels, digit, n)
        ablated = steered_logits(model, ev_images[mask], sae, classifier, [LatentEdit(top.tolist())])
        drop = (base[mask, digit] - ablated[:, digit]).mean().item()
        rand = []
        for _ in range(4):
            pick = alive[torch.randperm(len(alive), generator=g)[:n]]
            r = steered_logits(model, ev_images[mask], sae, classifier, [LatentEdit(pick.tolist())])
            rand.append((base[mask, digit] - r[:, digit]).mean().item())
        rdrop = sum(rand) / len(rand)
        class_drops.append(drop)
        random_drops.append(rdrop)
        wins += drop > rdrop
    # on average the class's own latents matter far more (measured: 1.10 vs 0.056 logits, 9 of
    # 10 digits); per digit, a clear majority
    assert sum(class_drops) / 10 > 5 * max(sum(random_drops) / 10, 1e-3), (class_drops, random_drops)
    assert wins >= 7, (class_drops, random_drops)


@SLOW
def test_zero_shot_accuracy_kept_matches_independent_computation(setup) -> None:
    model, sae, classifier = setup
    sae.set_default_k(32)  # a prior value that is neither evaluated below nor the default None
    images, labels = scenes(300, seed=13)
    res = zero_shot_accuracy_kept(model, sae, images, labels, classifier, ks=[8, 64, None])
    with torch.no_grad():
        ref = zero_shot_accuracy(model.clip.encode_image(images), classifier, labels)
    assert res["original"] == pytest.approx(ref, abs=1e-6)
    assert ref > 0.5  # the embedded model is a working classifier
    # more latents, better kept accuracy; the ReLU path keeps most of it
    assert res["k=64"]["accuracy"] >= res["k=8"]["accuracy"] - 0.02
    assert res["relu"]["kept"] > 0.8
    assert sae.cfg.default_k == 32  # exactly the prior value, restored afterwards


def _tiny_msae(model: HookedOpenCLIP, default_k: int | None):
    """An untrained MSAE at HOOK: enough to exercise the k bookkeeping in seconds."""
    from msae_plugin.msae.config import MSAEConfig
    from msae_plugin.msae.sae import MSAE

    cfg = MSAEConfig(d_in=model.cfg.d_model, d_sae=32, k_start=4, default_k=default_k)
    cfg.metadata.hook_name = HOOK
    return MSAE(cfg).eval()


@pytest.mark.parametrize("prior", [16, None])
def test_zero_shot_accuracy_kept_restores_default_k_after_an_error(prior, monkeypatch) -> None:
    """The evaluation switches ``default_k`` per level; a failure mid-way (here: the spliced
    forward raises at the second level) must still leave the caller's exact value in place."""
    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip")
    sae = _tiny_msae(model, prior)
    images, labels = scenes(8, seed=3)
    classifier = torch.nn.functional.normalize(torch.randn(10, model(images[:1]).shape[-1]), dim=-1)
    seen: list[int | None] = []
    real = model.run_with_saes

    def flaky(*args, **kwargs):
        seen.append(sae.cfg.default_k)
        if len(seen) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "run_with_saes", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        zero_shot_accuracy_kept(model, sae, images, labels, classifier, ks=[4, 8, None])
    assert seen == [4, 8]  # the levels really were switched before the failure
    assert sae.cfg.default_k == prior


@pytest.mark.parametrize("prior", [16, None])
def test_zero_shot_accuracy_kept_restores_default_k(prior) -> None:
    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip")
    sae = _tiny_msae(model, prior)
    images, labels = scenes(8, seed=3)
    classifier = torch.nn.functional.normalize(torch.randn(10, model(images[:1]).shape[-1]), dim=-1)
    res = zero_shot_accuracy_kept(model, sae, images, labels, classifier, ks=[None, 4])
    assert set(res) == {"original", "original_ece", "calibration", "k=4", "relu"}
    assert sae.cfg.default_k == prior


@SLOW
def test_sae_metadata_records_where_it_belongs(setup) -> None:
    model, sae, _ = setup
    meta = sae.cfg.metadata
    assert meta.hook_name == HOOK and meta.model_name == "msae-tiny-clip"
    assert meta.model_class_name == "HookedOpenCLIP"
    assert meta.token_selection == "all" and meta.context_size == model.cfg.n_ctx
    assert list(meta.image_size) == list(model.cfg.image_size)
