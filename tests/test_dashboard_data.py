"""What the dashboard shows, checked against independent computations on the shipped MSAEs
(``msae-tiny-clip-msae``) and the embedded model: image scores and top images, densities,
histograms, heat maps, graded examples, names, neighbours, ladder levels, logit effects; and
every bad input of issue 11."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sae_lens import SAE

from msae_plugin.concepts import load_vocabulary, name_concepts
from msae_plugin.concepts.naming import level_shares
from msae_plugin.dashboard import build_dashboard, check_page_size, collect_dashboard
from msae_plugin.dashboard.effects import decoder_vectors
from msae_plugin.embedded import make_digit_scenes
from msae_plugin.embedded.dataset import CLASS_NAMES
from msae_plugin.embedded.zero_shot import build_zero_shot_classifier
from msae_plugin.errors import DashboardError
from msae_plugin.vision import HookedOpenCLIP

RELEASE = "msae-tiny-clip-msae"


@pytest.fixture(scope="module")
def model():
    return HookedOpenCLIP.from_pretrained("msae-tiny-clip").eval()


@pytest.fixture(scope="module")
def scenes():
    return make_digit_scenes(240, "test", seed=5)


@pytest.fixture(scope="module")
def images(model, scenes):
    return model.preprocess(scenes.images)


def _collect(sae, model, images, scenes, **kw):
    return collect_dashboard(sae, model, images, labels=scenes.labels, class_names=CLASS_NAMES,
                             progress=False, **kw)


@pytest.fixture(scope="module")
def embed(model, images, scenes):
    sae = SAE.from_pretrained(RELEASE, "hook_image_embed").eval()
    return sae, _collect(sae, model, images, scenes)


@pytest.fixture(scope="module")
def patch(model, images, scenes):
    sae = SAE.from_pretrained(RELEASE, "blocks.2.hook_resid_post").eval()
    return sae, _collect(sae, model, images, scenes)


@torch.no_grad()
def _patch_codes(model, sae, images):
    """Independent: the hook via run_with_cache, codes via the MSAE's ReLU path."""
    _, cache = model.run_with_cache(images, names_filter=["blocks.2.hook_resid_post"])
    return sae.encode(cache["blocks.2.hook_resid_post"], k=sae.cfg.d_sae)  # [n, 65, d_sae]


def test_embedding_hook_scores_densities_and_top_images(model, images, embed):
    sae, data = embed
    with torch.no_grad():
        codes = sae.encode(model.encode_image(images), k=sae.cfg.d_sae)  # [n, d_sae]
    lat = data.meta["latents"]
    assert data.meta["grid"] is None and data.meta["tokens_per_image"] == 1
    np.testing.assert_allclose(lat["freq_image"], (codes > 0).float().mean(0), atol=1e-6)
    np.testing.assert_allclose(lat["max"], codes.max(0).values, rtol=1e-4, atol=1e-6)
    checked = 0
    for j in range(0, sae.cfg.d_sae, 37):
        card = data.cards[j]
        assert card["id"] == j
        expected = codes[:, j][codes[:, j] > 0].sort(descending=True).values[:12]
        got = torch.tensor([ex["v"] for ex in card["top"]])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
        assert all(ex["heat"] is None for ex in card["top"])
        assert sum(card["hist"]["counts"]) == int((codes[:, j] > 0).sum())
        checked += bool(len(card["top"]))
    assert checked > 5


def test_patch_hook_stats_histograms_and_heat_maps(model, images, scenes, patch):
    sae, data = patch
    codes = _patch_codes(model, sae, images)
    lat = data.meta["latents"]
    assert data.meta["grid"] == [8, 8]
    np.testing.assert_allclose(lat["freq_token"], (codes > 0).float().mean((0, 1)), atol=1e-6)
    np.testing.assert_allclose(lat["freq_image"], (codes > 0).any(1).float().mean(0), atol=1e-6)
    active = (codes > 0).float()
    mean_active = (codes * active).sum((0, 1)) / active.sum((0, 1)).clamp(min=1)
    np.testing.assert_allclose(lat["mean_active"], mean_active, rtol=1e-3, atol=1e-6)
    score = codes.mean(1)  # image score: mean over tokens
    for j in (0, 5, 77, 300, 1023):
        card = data.cards[j]
        top = card["top"]
        expected = score[:, j].sort(descending=True)
        np.testing.assert_allclose([ex["v"] for ex in top], expected.values[:len(top)],
                                   rtol=1e-4, atol=1e-6)
        assert [ex["cls"] for ex in top] == [int(scenes.labels[i])
                                             for i in expected.indices[:len(top)]]
        assert card["class_dist"] == np.bincount([ex["cls"] for ex in top], minlength=10).tolist()
        # histogram of non-zero token codes over (0, max]
        vals = codes[..., j][codes[..., j] > 0]
        hist = np.histogram(vals.numpy(), bins=50, range=(0, float(vals.max())))[0]
        assert sum(card["hist"]["counts"]) == len(vals)
        assert np.abs(np.array(card["hist"]["counts"]) - hist).sum() <= 4  # bin-edge rounding
        # heat map of the best image: its patch codes / the card's scale, as uint8
        best = int(expected.indices[0])
        heat = np.frombuffer(base64.b64decode(top[0]["heat"]), dtype=np.uint8)
        ref = (codes[best, 1:, j].clamp(min=0) / card["heat_max"] * 255).numpy()
        assert heat.shape == (64,) and np.abs(heat - ref).max() <= 1.0
        assert card["heat_max"] >= float(codes[best, 1:, j].max()) - 1e-5


def test_graded_examples_exclude_zeros_and_top_images(patch):
    _, data = patch
    for card in data.cards[::50]:
        if not card["intervals"]:
            continue
        top_imgs = {ex["img"] for ex in card["top"]}
        assert abs(sum(iv["contains"] for iv in card["intervals"]) - 1) < 1e-6
        for iv in card["intervals"]:
            for ex in iv["examples"]:
                assert ex["v"] > 0 and iv["lo"] - 1e-6 <= ex["v"] <= iv["hi"] + 1e-6
                assert ex["img"] not in top_imgs


def test_names_match_name_concepts(model, images, embed, patch):
    vocab = load_vocabulary()
    for sae, data in (embed, patch):
        names = name_concepts(sae, model, vocab, images=images)
        lat = data.meta["latents"]
        assert lat["name_valid"] == [x.valid for x in names.latents]
        assert lat["level"] == [x.min_level for x in names.latents]
        alive = [x.alive for x in names.latents]
        assert lat["name"] == [x.word if a else "" for x, a in zip(names.latents, alive,
                                                                       strict=True)]
        for j in range(0, sae.cfg.d_sae, 97):
            assert data.cards[j]["words"][0][0] == names.latents[j].word


def test_neighbours_against_direct_computation(embed, model, images):
    sae, data = embed
    w = F.normalize(sae.W_dec.detach() / sae.input_scale.detach(), dim=-1)
    cos = w @ w.T
    cos.fill_diagonal_(-2)
    with torch.no_grad():
        codes = sae.encode(model.encode_image(images), k=sae.cfg.d_sae).numpy()
    for j in (3, 100, 400):
        card = data.cards[j]
        ids = [i for i, _ in card["near_decoder"]]
        assert ids == cos[j].topk(10).indices.tolist()
        for i, r in card["near_coact"][:3]:
            assert abs(r - np.corrcoef(codes[:, j], codes[:, i])[0, 1]) < 1e-4


def test_level_shares_strongest_token_against_brute_force(patch, model, images):
    sae, _ = patch
    with torch.no_grad():
        _, cache = model.run_with_cache(images[:40], names_filter=["blocks.2.hook_resid_post"])
        x = cache["blocks.2.hook_resid_post"]
        pre = sae.hidden_pre_from(x)  # [40, 65, d_sae]
    top = torch.randint(0, 40, (sae.cfg.d_sae, 6), generator=torch.Generator().manual_seed(0))
    shares = level_shares(sae, x, top)
    for j in (1, 200, 999):
        for li, k in enumerate(sae.cfg.ladder):
            sel = []
            for i in top[j]:
                t = int(pre[i, :, j].argmax())
                sel.append(bool(sae.encode(x[i, t][None], k=k)[0, j] > 0))
            assert abs(shares[li, j] - np.mean(sel)) < 1e-6, (j, k)


def test_logit_effect_matches_a_finite_difference(embed, model, images):
    sae, data = embed
    classifier = build_zero_shot_classifier(model, model.tokenizer, list(CLASS_NAMES))
    mean_active = torch.tensor(data.meta["latents"]["mean_active"])
    vectors = decoder_vectors(sae)
    with torch.no_grad():  # central difference in float64
        emb = model.encode_image(images[:64]).double()
        c, s = classifier.double(), model.logit_scale()
        for j in (2, 50, 311):
            eps, step = 1e-4, mean_active[j].double() * vectors[j].double()
            up = s * F.normalize(emb + eps * step, dim=-1) @ c.T
            down = s * F.normalize(emb - eps * step, dim=-1) @ c.T
            expected = ((up - down) / (2 * eps)).mean(0)
            np.testing.assert_allclose(data.cards[j]["logit_effect"], expected, rtol=1e-2,
                                       atol=2e-5)


def test_dead_latent_card(model, images, scenes):
    sae = SAE.from_pretrained(RELEASE, "hook_image_embed").eval()
    with torch.no_grad():
        sae.b_enc[7] = -1e4  # latent 7 can never fire
    data = _collect(sae, model, images[:60], scenes_slice(scenes, 60))
    card = data.cards[7]
    assert data.meta["latents"]["flag"][7] == "dead"
    assert card["top"] == [] and card["intervals"] == [] and sum(card["hist"]["counts"]) == 0
    assert data.meta["latents"]["name"][7] == ""


def scenes_slice(scenes, n):
    class S:
        labels = scenes.labels[:n]
    return S


def test_bad_inputs(model, images, scenes, tmp_path):
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = SAE.from_pretrained(RELEASE, "hook_image_embed").eval()
    sae.cfg.metadata.hook_name = "blocks.9.hook_resid_post"
    with pytest.raises(DashboardError, match="no hook 'blocks.9.hook_resid_post'.*blocks"):
        collect_dashboard(sae, model, images[:8], progress=False)
    wrong = StandardSAE(StandardSAEConfig(d_in=50, d_sae=16))
    wrong.cfg.metadata.hook_name = "blocks.2.hook_resid_post"
    with pytest.raises(DashboardError, match="d_in=50 .* 96 wide"):
        collect_dashboard(wrong, model, images[:8], progress=False)
    sae.cfg.metadata.hook_name = "hook_image_embed"
    with pytest.raises(DashboardError, match="empty"):
        collect_dashboard(sae, model, images[:0], progress=False)
    with pytest.raises(DashboardError, match="one class id per image"):
        collect_dashboard(sae, model, images[:8], labels=scenes.labels[:5], progress=False)
    with pytest.raises(DashboardError, match="raise page_size to at least 16"):
        check_page_size(16384, 8)
    with pytest.raises(DashboardError, match="page_size must be"):
        check_page_size(512, 0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(Exception, match="file"):
        build_dashboard(blocker / "site", sae, model, images[:8], progress=False)


def test_standard_sae_has_no_levels(model, images, scenes):
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=96, d_sae=32)).eval()
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    data = _collect(sae, model, images[:50], scenes_slice(scenes, 50))
    assert data.meta["sae"]["ladder"] is None and all(c["levels"] is None for c in data.cards)
    assert data.meta["grid"] == [8, 8] and len(data.cards) == 32
