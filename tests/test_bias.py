"""Concept bias analysis (msae_plugin.bias): flip rates and accuracy changes recomputed
independently (sklearn predictions, the clamp written out with sae.encode / sae.decode), the
biased-vs-unbiased ordering on the embedded demonstration, bad inputs, and ``msae bias``.

One module fixture loads the shipped release SAE and the embedded model and embeds 200 scenes per
set (biased train, balanced train, balanced held-out); no SAE is trained here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_lens import SAE
from sklearn.linear_model import LogisticRegression

from msae_plugin.bias import LinearProbe, clamp_embeddings, concept_bias, concept_values
from msae_plugin.bias.demo import RELEASE, group_names, run_demo, scene_set
from msae_plugin.cli import main
from msae_plugin.concepts import load_vocabulary, name_concepts
from msae_plugin.errors import BiasAnalysisError, ConceptSearchError, UnknownConceptError
from msae_plugin.vision import HookedOpenCLIP

N = 200


@pytest.fixture(scope="module")
def setup():
    sae = SAE.from_pretrained(*RELEASE).eval()
    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip").eval()
    names = name_concepts(sae, model, load_vocabulary())
    x, y, c = scene_set(model, N, "test", 1, biased=False)
    probes = {}
    for kind in ("biased", "unbiased"):
        xt, yt, _ = scene_set(model, N, "train", 0, biased=kind == "biased")
        probes[kind] = LogisticRegression(max_iter=2000).fit(xt.numpy(), yt.numpy())
    return {"sae": sae, "model": model, "names": names, "x": x, "y": y, "c": c,
            "groups": group_names(y, c), "probes": probes}


def _clamp_by_hand(sae, x, latents, values):
    """The clamp written out: codes of ``latents`` set to ``values``, through the error term."""
    with torch.no_grad():
        z = sae.encode(x, k=sae.cfg.d_sae)
        z2 = z.clone()
        z2[:, latents] = torch.tensor(values, dtype=z.dtype)
        return (x + sae.decode(z2) - sae.decode(z)).float()


@pytest.mark.parametrize("kind", ["biased", "unbiased"])
def test_flip_rate_and_accuracy_match_an_independent_computation(setup, kind):
    sae, x, y, groups = setup["sae"], setup["x"], setup["y"].numpy(), setup["groups"]
    clf = setup["probes"][kind]
    red = setup["names"].latents_named("red")
    res = concept_bias(sae, x, y, LinearProbe(clf), "red", names=setup["names"], groups=groups)
    with torch.no_grad():
        top = sae.encode(x, k=sae.cfg.d_sae)[:, red].max(0).values.tolist()
    assert res.latents == red and res.values == pytest.approx(top)
    before = clf.predict(x.numpy())
    after = {"up": clf.predict(_clamp_by_hand(sae, x, red, top).numpy()),
             "down": clf.predict(_clamp_by_hand(sae, x, red, [0.0] * len(red)).numpy())}
    g = np.array(groups)
    for edit, pred in after.items():
        assert np.array_equal(res.predictions[edit].numpy(), pred)
        assert res.overall[edit].flip_rate == pytest.approx((pred != before).mean())
        assert res.overall[edit].accuracy_change == pytest.approx(
            (pred == y).mean() - (before == y).mean())
        for name in set(groups):
            m = g == name
            assert res.groups[name][edit].n == m.sum()
            assert res.groups[name][edit].flip_rate == pytest.approx((pred[m] != before[m]).mean())
            assert res.groups[name][edit].accuracy_after == pytest.approx((pred[m] == y[m]).mean())
    assert res.overall["up"].flip_rate > 0  # the edit does something on both probes


def test_biased_probe_flips_far_more_than_the_unbiased_one(setup):
    """The demonstration's claim, on the test's own 200-scene sets (docs/bias.md: 0.50 vs 0.05
    up, 0.23 vs 0.04 down on 400)."""
    res = {kind: concept_bias(setup["sae"], setup["x"], setup["y"], LinearProbe(clf), "red",
                              names=setup["names"], groups=setup["groups"])
           for kind, clf in setup["probes"].items()}
    b, u = res["biased"], res["unbiased"]
    for edit in ("up", "down"):
        assert b.overall[edit].flip_rate >= 2 * u.overall[edit].flip_rate + 0.05, edit
    assert b.overall["up"].flip_rate >= u.overall["up"].flip_rate + 0.25
    # red added to blue odd digits: the biased probe calls them even, the unbiased mostly not
    assert b.groups["odd/blue"]["up"].accuracy_change <= -0.5
    assert u.groups["odd/blue"]["up"].accuracy_change >= -0.35
    assert u.overall["up"].accuracy_before >= 0.85  # the unbiased probe does learn parity


def test_explicit_values_strength_and_clamp(setup):
    sae, x = setup["sae"], setup["x"]
    red = setup["names"].latents_named("red")
    top = concept_values(sae, x, red)
    assert concept_values(sae, x, red, strength=0.5) == pytest.approx([v / 2 for v in top])
    clamped = clamp_embeddings(sae, x, red, [2.0] * len(red))
    assert torch.allclose(clamped, _clamp_by_hand(sae, x, red, [2.0] * len(red)), atol=1e-4)
    probe = LinearProbe(setup["probes"]["biased"])
    one = concept_bias(sae, x, setup["y"], probe, red, values=2.0)
    many = concept_bias(sae, x, setup["y"], probe, red, values=[2.0] * len(red))
    half = concept_bias(sae, x, setup["y"], probe, red, strength=0.5)
    assert one.values == many.values == [2.0] * len(red)
    assert torch.equal(one.predictions["up"], many.predictions["up"])
    assert half.values == pytest.approx([v / 2 for v in top])
    assert not one.groups and json.dumps(one.to_dict())


def test_zero_shot_digit_classifier_ignores_red_but_not_two(setup):
    """Any callable works: a zero-shot digit classifier (never saw colour-tied data)."""
    from msae_plugin.embedded.dataset import make_digit_scenes
    from msae_plugin.embedded.zero_shot import build_zero_shot_classifier, zero_shot_logits

    model, sae = setup["model"], setup["sae"]
    cls = build_zero_shot_classifier(model, model.tokenizer)
    scenes = make_digit_scenes(200, "test", seed=5)
    with torch.no_grad():
        x = model.encode_image(model.preprocess(scenes.images)).float()
    res = concept_bias(sae, x, scenes.labels, lambda e: zero_shot_logits(e, cls), "red",
                       names=setup["names"])
    before = zero_shot_logits(x, cls).argmax(-1)
    assert res.overall["up"].accuracy_before == pytest.approx(
        float((before == scenes.labels).float().mean()))
    assert res.overall["up"].flip_rate < 0.1  # measured 0.02
    # control: the concept it should rely on. "two" clamped up: most decisions become 2
    two = concept_bias(sae, x, scenes.labels, lambda e: zero_shot_logits(e, cls), "two",
                       names=setup["names"])
    assert two.overall["up"].flip_rate > 0.5  # measured 0.78
    assert float((two.predictions["up"] == 2).float().mean()) > 0.6


# ---- bad inputs ----------------------------------------------------------------------------

def _run(setup, **kw):
    args = {"labels": setup["y"], "latents": [246], "classifier":
            LinearProbe(setup["probes"]["unbiased"])}
    args.update(kw)
    return concept_bias(setup["sae"], setup["x"], args.pop("labels"), args.pop("classifier"),
                        args.pop("latents"), **args)


def test_labels_missing(setup):
    with pytest.raises(BiasAnalysisError, match="labels are missing"):
        _run(setup, labels=None)


@pytest.mark.parametrize("labels", [[0, 1, 0], torch.zeros(N, 2)])
def test_labels_of_the_wrong_length_or_shape(setup, labels):
    with pytest.raises(BiasAnalysisError, match=f"there are {N} embeddings; pass one per"):
        _run(setup, labels=labels)


def test_groups_of_the_wrong_length(setup):
    with pytest.raises(BiasAnalysisError, match="groups has 3 entries for 200 embeddings"):
        _run(setup, groups=["a", "b", "c"])


def test_unknown_concept_name_suggests_the_nearest(setup):
    with pytest.raises(UnknownConceptError, match="Did you mean 'red'"):
        _run(setup, latents="rd", names=setup["names"])


def test_concept_word_without_names(setup):
    with pytest.raises(BiasAnalysisError, match="no names were given.*name_concepts"):
        _run(setup, latents="red")


def test_values_and_strength_together_or_wrong_count(setup):
    with pytest.raises(BiasAnalysisError, match="values or strength, not both"):
        _run(setup, values=1.0, strength=1.0)
    with pytest.raises(BiasAnalysisError, match="2 clamp values for 1 latents"):
        _run(setup, values=[1.0, 2.0])


def test_classifier_with_the_wrong_output(setup):
    with pytest.raises(BiasAnalysisError, match=r"must return \[n, classes\] logits"):
        _run(setup, classifier=lambda e: e[:, 0])


def test_empty_embeddings(setup):
    with pytest.raises(BiasAnalysisError, match="non-empty"):
        concept_bias(setup["sae"], torch.zeros(0, 64), [], lambda e: e, [1])


def test_bad_latent_id_uses_the_concepts_error(setup):
    with pytest.raises(ConceptSearchError, match="latents must be a non-empty list"):
        _run(setup, latents=[setup["sae"].cfg.d_sae])


def test_linear_probe_needs_index_labels(setup):
    clf = LogisticRegression().fit(setup["x"].numpy(), setup["y"].numpy() + 3)
    with pytest.raises(BiasAnalysisError, match="fit it on labels 0..C-1"):
        LinearProbe(clf)


# ---- msae bias ---------------------------------------------------------------------------

def test_cli_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["bias", "--out", str(tmp_path / "f")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_writes_table_json_and_plot(tmp_path, capsys):
    assert main(["bias", "--n-images", "120", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bias.json").read_text())
    b, u = (data["probes"][k]["overall"]["up"]["flip_rate"] for k in ("biased", "unbiased"))
    assert b > u + 0.2
    assert (tmp_path / "bias.md").read_text().startswith("| probe | group |")
    assert (tmp_path / "bias.png").stat().st_size > 1000
    assert main(["bias", "--concept", "rd", "--out", str(tmp_path)]) == 2
    assert "Did you mean 'red'" in capsys.readouterr().err


def test_run_demo_reuses_given_model_and_sae(setup):
    demo = run_demo(40, sae=setup["sae"], model=setup["model"])
    assert set(demo.results) == {"biased", "unbiased"} and demo.n_eval == 40
