"""Remapping analyses (issue 12) on the embedded model and the shipped patch MSAE: counts against
a direct computation, the identity adaptation, class-wise vs random masking, the group rule on
hand-made counts, Δ, the headline number, and every bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from sae_lens import SAE

from msae_plugin.embedded import make_digit_scenes
from msae_plugin.embedded.dataset import CLASS_NAMES
from msae_plugin.errors import RemappingError
from msae_plugin.remapping import (
    compare_models,
    improvement_rate,
    latent_groups,
    per_class_accuracy,
    selection_masks,
    summarize,
)
from msae_plugin.remapping.masking import hook_codes
from msae_plugin.vision import HookedOpenCLIP
from msae_plugin.zero_shot_model import ZeroShotModel

HOOK = "blocks.2.hook_resid_post"
K = 32


@pytest.fixture(scope="module")
def base():
    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip").eval()
    return ZeroShotModel.from_templates(model, CLASS_NAMES, name="base")


@pytest.fixture(scope="module")
def sae():
    return SAE.from_pretrained("msae-tiny-clip-msae", HOOK).eval()


@pytest.fixture(scope="module")
def data(base):
    tr = make_digit_scenes(300, "train", seed=21)
    te = make_digit_scenes(200, "test", seed=22)
    return (base.model.preprocess(tr.images), tr.labels), (base.model.preprocess(te.images),
                                                          te.labels)


@pytest.fixture(scope="module")
def perturbed(base):
    """A different model with the same layout: block 1's MLP output weights scaled."""
    model = copy.deepcopy(base.model)
    with torch.no_grad():
        model.clip.visual.transformer.resblocks[1].mlp.c_proj.weight.mul_(1.6)
    return ZeroShotModel(model, base.class_embeddings, list(CLASS_NAMES), base.logit_scale,
                         "perturbed")


def test_counts_match_a_direct_computation(base, sae, data):
    (x, y), _ = data
    s = summarize(base, sae, x[:60], y[:60], 10, tau=0.2, k=K)
    with torch.no_grad():
        _, cache = base.model.run_with_cache(x[:60], names_filter=[HOOK])
        z = sae.encode(cache[HOOK], k=K)  # [60, 65, d_sae]
    expected = torch.zeros(10, sae.cfg.d_sae)
    for i in range(60):
        expected[int(y[i])] += (z[i] > 0.2).sum(0).float()
    assert torch.equal(s.counts, expected)
    assert torch.allclose(s.freq, (z > 0).float().mean((0, 1)))
    assert s.n_tokens == 60 * 65


def test_identity_adaptation_shows_no_shift(base, sae, data):
    same = ZeroShotModel(base.model, base.class_embeddings, list(CLASS_NAMES), base.logit_scale,
                         "identity")
    r = compare_models(base, same, sae, data[0], data[1], base_classes=range(5), k=K, ks=[10],
                       selections=("class", "random"), progress=False)
    assert torch.equal(r.train["base"].counts, r.train["identity"].counts)
    assert torch.equal(r.test["base"].freq, r.test["identity"].freq)
    assert r.shifts["appear"] == [] and r.shifts["vanish"] == []
    assert float(r.groups.high_to_low.sum()) == 0 and float(r.groups.low_to_high.sum()) == 0
    for key, curve in r.curves["base"].curves.items():
        assert torch.equal(curve, r.curves["identity"].curves[key]), key
    assert torch.equal(r.curves["base"].on_all, r.curves["identity"].on_all)
    for row in r.summary_rows():
        assert row["delta"] == 0
    d = r.to_dict()
    assert d["dataset_count_pearson"] == pytest.approx(1.0)


def test_zeroing_class_latents_hurts_more_than_random(base, sae, data):
    (xtr, ytr), (xte, yte) = data
    s = summarize(base, sae, xtr, ytr, 10, k=K)
    spliced = per_class_accuracy(base, xte, yte, 10, sae, None, K)
    cached = hook_codes(base, sae, xte, K)  # reusing the codes changes nothing
    assert torch.equal(per_class_accuracy(base, xte, yte, 10, sae, None, K, codes=cached), spliced)
    drops = {}
    for kind in ("class", "random"):
        off = ~selection_masks(kind, s.counts, 10, s.fires_token > 0, seed=0)
        drops[kind] = float((spliced - per_class_accuracy(base, xte, yte, 10, sae, off, K)).mean())
    assert drops["class"] > drops["random"] + 0.1, drops


def test_a_real_change_is_seen(base, perturbed, sae, data):
    r = compare_models(base, perturbed, sae, data[0], data[1], base_classes=range(5), k=K,
                       ks=[10], selections=("class",), progress=False)
    assert not torch.equal(r.train["base"].counts, r.train["perturbed"].counts)
    assert len(r.shifts["change_most"]) == 10
    acc_b = r.accuracy("base", range(5))
    acc_p = r.accuracy("perturbed", range(5))
    assert r.summary_rows()[0]["delta"] == pytest.approx(100 * improvement_rate(acc_b, acc_p))
    h = r.headline
    gain = h["adapted_sae"] - h["base_sae"]
    assert h["recovered"] == pytest.approx((h["adapted_base_latents_only"] - h["base_sae"]) / gain)


def test_group_rule_on_hand_made_counts():
    # 6 latents; pooled values of class 0: x = base, y = adapted
    x = torch.tensor([[9.0, 8.0, 7.0, 0.0, 1.0, 0.0]])
    y = torch.tensor([[9.0, 0.0, 6.0, 8.0, 1.0, 0.0]])
    g = latent_groups(x, y, upper_rank=4, lower_rank=7)
    # pooled sorted: 9 9 8 8 7 6 1 ... -> U = 8 (4th), L = 1 (7th)
    assert g.members[0] == {"high": [0], "high_to_low": [1], "low_to_high": [3]}
    g2 = latent_groups(x, y, upper_rank=2, lower_rank=4, reading="per_model")
    assert g2.members[0]["high"] == [0]
    assert improvement_rate(50.0, 75.0) == 0.5


def test_bad_inputs(base, perturbed, sae, data, monkeypatch):
    (xtr, ytr), (xte, yte) = data
    with pytest.raises(RemappingError, match="tau must be > 0"):
        summarize(base, sae, xtr[:4], ytr[:4], 10, tau=0)
    with pytest.raises(RemappingError, match="outside 1..d_sae=1024"):
        compare_models(base, perturbed, sae, data[0], data[1], k=5000, progress=False)
    with pytest.raises(RemappingError, match=r"k values \[2048\] are outside"):
        compare_models(base, perturbed, sae, data[0], data[1], ks=[1, 2048], progress=False)
    few = ytr.clone()
    few[few == 7] = 6
    with pytest.raises(RemappingError, match=r"classes \[7\] have no training images"):
        compare_models(base, perturbed, sae, (xtr, few), data[1], progress=False)
    with pytest.raises(RemappingError, match="different names"):
        compare_models(base, base, sae, data[0], data[1], progress=False)
    other = SAE.from_pretrained("msae-tiny-clip-msae", "hook_image_embed").eval()
    other.cfg.metadata.hook_name = "blocks.2.hook_resid_pots"
    with pytest.raises(RemappingError, match="no hook 'blocks.2.hook_resid_pots'.*Did you mean"):
        compare_models(base, perturbed, other, data[0], data[1], progress=False)
    other.cfg.metadata.hook_name = HOOK  # an SAE trained on another hook: width 64, not 96
    with pytest.raises(RemappingError, match="96 wide but the SAE has d_in=64"):
        compare_models(base, perturbed, other, data[0], data[1], progress=False)
    from helpers import tiny_clip

    small = HookedOpenCLIP(tiny_clip(layers=3), model_name="tiny-test").eval()
    tiny = ZeroShotModel(small, torch.nn.functional.normalize(torch.randn(10, 32), dim=-1),
                         list(CLASS_NAMES), 100.0, "tiny")
    with pytest.raises(RemappingError, match="token layouts differ"):
        compare_models(base, tiny, sae, data[0], data[1], progress=False)


def test_base_to_novel_classifies_each_half_among_its_classes(base, perturbed, sae, data):
    from msae_plugin.remapping.protocol import _half, base_to_novel

    (xte, yte) = data[1]
    x, y = _half(xte, yte, [5, 7, 9])
    assert len(x) == int(torch.isin(yte, torch.tensor([5, 7, 9])).sum())
    assert set(y.tolist()) == {0, 1, 2}
    assert torch.equal(torch.tensor([5, 7, 9])[y], yte[torch.isin(yte, torch.tensor([5, 7, 9]))])
    sub = base.subset([5, 7, 9])
    assert sub.class_names == ["five", "seven", "nine"]
    assert torch.equal(sub.class_embeddings, base.class_embeddings[[5, 7, 9]])
    res = base_to_novel(base, perturbed, sae, data[0], data[1], [0, 1, 2, 3, 4], k=K, ks=[10],
                        selections=("class",), progress=False)
    assert set(res) == {"base", "novel"}
    assert res["novel"].class_names == ["five", "six", "seven", "eight", "nine"]
    # accuracy of the base half = 5-way accuracy computed directly
    xb, yb = _half(*data[1], [0, 1, 2, 3, 4])
    direct = (base.subset(range(5)).logits(xb).argmax(-1) == yb).float()
    per_class = torch.stack([direct[yb == c].mean() for c in range(5)])
    assert torch.allclose(res["base"].curves["base"].original, per_class)
    top = res["base"].class_top_latents(3)
    assert len(top) == 5 and len(top[0]["base"]) == 3
    with pytest.raises(RemappingError, match="disjoint"):
        base_to_novel(base, perturbed, sae, data[0], data[1], [0, 1], [1, 2], progress=False)
