"""Linear probes with control tasks (msae_plugin.probes, docs/probes.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from msae_plugin.cli import main
from msae_plugin.errors import ProbeInputError
from msae_plugin.probes import (
    control_labels,
    hook_activations,
    pooled_features,
    probe,
    run_study,
    sae_features,
)
from msae_plugin.probes.probe import split_indices

LAST = "blocks.3.hook_resid_post"


@pytest.fixture(scope="module")
def embedded():
    """Model, 600 held-out scenes and their activations at the last block and the embedding."""
    from sae_lens import SAE

    from msae_plugin.embedded.dataset import make_digit_scenes
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP

    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip").eval()
    scenes = make_digit_scenes(600, "test", seed=3)
    images = model.preprocess(scenes.images)
    acts = hook_activations(model, images, [LAST, "hook_image_embed"])
    sae = SAE.from_pretrained("msae-tiny-clip-msae", "hook_image_embed")
    sae = (sae[0] if isinstance(sae, tuple) else sae).eval()
    return model, scenes, images, acts, sae


def _separable(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    y = (x @ np.array([2.0, -1.0, 0.5, 0.0, 1.0]) > 0).astype(int)
    return x, y


def test_accuracy_equals_independent_sklearn_fit_on_separable_data() -> None:
    x, y = _separable()
    r = probe(x, y, test_fraction=0.25, seed=1)
    train, test = split_indices(len(x), 0.25, 1)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], y[train])
    assert r.accuracy == pytest.approx(clf.score(x[test], y[test]), abs=1e-12)
    assert r.accuracy >= 0.95  # linearly separable: a linear probe nearly always right
    assert (r.n_train, r.n_test, r.n_classes) == (300, 100, 2)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(400))


def test_random_labels_give_chance_accuracy() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1200, 8))
    y = rng.integers(0, 2, size=1200)
    r = probe(x, y, seed=2)
    assert abs(r.accuracy - 0.5) < 0.08


def test_selectivity_is_accuracy_minus_control_exactly() -> None:
    x, y = _separable()
    r = probe(x, y, types=np.arange(len(y)) // 4, seed=0)
    assert r.selectivity == r.accuracy - r.control_accuracy
    off = probe(x, y, control=False)
    assert off.control_accuracy is None and off.selectivity is None
    assert off.accuracy == probe(x, y).accuracy


def test_control_labels_are_one_random_label_per_type() -> None:
    labels = np.repeat(np.arange(5), 40)  # 200 samples
    types = np.arange(200) % 50
    ctrl = control_labels(labels, types, seed=0)
    for t in range(50):
        assert len(set(ctrl[types == t])) == 1
    assert set(ctrl) <= set(labels) and len(set(ctrl)) > 1
    assert np.array_equal(ctrl, control_labels(labels, types, seed=0))
    assert not np.array_equal(ctrl, control_labels(labels, types, seed=1))


def test_control_task_measures_memorisation_of_types() -> None:
    """Features = one-hot type id: a label that is a function of the type (and the control
    labels) are memorised perfectly, so selectivity is ~0; a property independent of the type
    is at chance."""
    rng = np.random.default_rng(0)
    types = rng.integers(0, 20, size=800)
    x = np.eye(20)[types]
    by_type = types % 3
    r = probe(x, by_type, types=types, seed=0)
    assert r.accuracy == 1.0 and r.control_accuracy == 1.0 and r.selectivity == 0.0
    noise = rng.integers(0, 2, size=800)
    assert abs(probe(x, noise, types=types).accuracy - 0.5) < 0.1


def test_digit_at_last_block_beats_its_control(embedded) -> None:
    _, scenes, _, acts, _ = embedded
    r = probe(pooled_features(acts[LAST]), scenes.labels, types=scenes.source_index, seed=0)
    assert r.accuracy > 0.8
    assert r.control_accuracy < r.accuracy - 0.4
    assert r.n_classes == 10


def test_features_equal_direct_computation(embedded) -> None:
    model, _, images, acts, sae = embedded
    _, cache = model.run_with_cache(images[:8], names_filter=[LAST])
    assert torch.allclose(pooled_features(acts[LAST])[:8], cache[LAST][:, 0], atol=1e-5)
    assert torch.allclose(pooled_features(acts[LAST], "mean")[:8], cache[LAST][:, 1:].mean(1),
                          atol=1e-5)
    emb = model.encode_image(images[:8]).detach()
    z = sae_features(sae, acts["hook_image_embed"], k=16)
    assert torch.allclose(z[:8], sae.encode(emb, k=16), atol=1e-4)
    assert ((z > 0).sum(dim=1) <= 16).all()
    # token hook: codes of the patch tokens (CLS dropped), averaged per image
    tok = sae_features(sae_like_identity(), acts[LAST][:4])
    assert torch.allclose(tok, acts[LAST][:4, 1:].relu().mean(1), atol=1e-6)


class sae_like_identity:  # noqa: N801 - a stand-in SAE whose code is relu(x)
    device, dtype = torch.device("cpu"), torch.float32

    class cfg:  # noqa: N801
        d_sae, ladder = 96, ()

    @staticmethod
    def encode(x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return x.relu()


def test_labels_missing_or_wrong_length() -> None:
    x, y = _separable(40)
    with pytest.raises(ProbeInputError, match="labels are missing"):
        probe(x, None)
    with pytest.raises(ProbeInputError, match="one label per row"):
        probe(x, y[:-1])
    with pytest.raises(ProbeInputError, match="one label per row"):
        probe(x, y[:, None])
    with pytest.raises(ProbeInputError, match="one type id per row"):
        probe(x, y, types=np.arange(3))


def test_property_with_one_class() -> None:
    x, _ = _separable(40)
    with pytest.raises(ProbeInputError, match="single class.*drop the property"):
        probe(x, np.full(40, 7))


@pytest.mark.parametrize("features, match", [
    (np.zeros(40), "2-D"),
    (np.full((40, 3), np.nan), "NaN"),
])
def test_bad_features(features, match) -> None:
    with pytest.raises(ProbeInputError, match=match):
        probe(features, np.arange(40) % 2)


@pytest.mark.parametrize("fraction, n, match", [
    (0.0, 40, "strictly between"), (1.5, 40, "strictly between"), (0.5, 3, "use more samples"),
])
def test_bad_split(fraction, n, match) -> None:
    with pytest.raises(ProbeInputError, match=match):
        probe(np.random.default_rng(0).normal(size=(n, 2)), np.arange(n) % 2,
              test_fraction=fraction)


def test_bad_hook_pool_k_property_and_layer(embedded) -> None:
    model, _, images, acts, sae = embedded
    with pytest.raises(ProbeInputError, match="Did you mean 'blocks.3.hook_resid_post'"):
        hook_activations(model, images[:2], ["blocks.3.hook_resid_pots"])
    with pytest.raises(ProbeInputError, match="Did you mean 'mean'"):
        pooled_features(acts[LAST], "meen")
    with pytest.raises(ProbeInputError, match="1..512"):
        sae_features(sae, acts["hook_image_embed"], k=0)
    with pytest.raises(ProbeInputError, match="Did you mean 'colour'"):
        run_study(model, properties=("color",), ks=())
    with pytest.raises(ProbeInputError, match="blocks 0..3"):
        run_study(model, layers=[7], ks=())


def test_cli_writes_table_json_png(embedded, tmp_path, capsys) -> None:
    out = tmp_path / "p"
    assert main(["probes", "--layers", "3", "--properties", "digit", "texture", "--ks", "16",
                 "--n-images", "300", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| blocks.3.hook_resid_post |" in text and "| msae@16 |" in text
    data = json.loads((out / "probes.json").read_text())
    assert data["sites"] == [LAST, "hook_image_embed", "msae@16"]
    for cell in data["cells"]:
        assert cell["selectivity"] == cell["accuracy"] - cell["control_accuracy"]
    assert (out / "probes.png").stat().st_size > 1000 and (out / "probes.md").exists()


def test_cli_bad_property_and_out_exit_2(tmp_path, capsys) -> None:
    assert main(["probes", "--properties", "digt", "--out", str(tmp_path / "o")]) == 2
    assert "error: unknown property 'digt'. Did you mean 'digit'?" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["probes", "--out", str(blocker)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
