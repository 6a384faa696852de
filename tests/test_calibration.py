"""Calibration (ECE, reliability curves and diagram) against hand-computed cases and an
independent NumPy implementation; the ECE inside ``zero_shot_accuracy_kept`` against the
embedded model's own zero-shot logits; every bad input refused with a clear error."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from msae_plugin.calibration import (
    DEFAULT_N_BINS,
    ReliabilityCurve,
    expected_calibration_error,
    reliability_curve,
)
from msae_plugin.errors import CalibrationError, OutputPathError
from msae_plugin.plots import plot_reliability_diagram

HOOK = "blocks.2.hook_resid_post"


def probs_rows(*rows: tuple[float, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class probability rows ``[c, 1 - c]`` (top class 0 when c ≥ 0.5) and labels."""
    p = torch.tensor([[c, 1 - c] for c, _ in rows], dtype=torch.float64)
    return p, torch.tensor([y for _, y in rows])


def ece_numpy(logits: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[float, list[int]]:
    """ECE from its definition, written independently of the module: softmax, top-class
    confidence, bins ((m-1)/M, m/M] (the first one closed at 0), Σ |B|/N · |acc − conf|."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    conf, correct = p.max(axis=1), p.argmax(axis=1) == labels
    edges = np.arange(n_bins + 1) / n_bins
    ece, counts = 0.0, []
    for m in range(n_bins):
        in_bin = (conf <= edges[m + 1]) & ((conf > edges[m]) if m > 0 else True)
        counts.append(int(in_bin.sum()))
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece), counts


# --- hand-computed cases ---------------------------------------------------------------------


def test_perfectly_calibrated_predictions_have_zero_ece() -> None:
    # 10 predictions at confidence 0.8 of which 8 are right, 5 at 0.6 of which 3 are right
    p, y = probs_rows(*[(0.8, 0)] * 8, *[(0.8, 1)] * 2, *[(0.6, 0)] * 3, *[(0.6, 1)] * 2)
    assert expected_calibration_error(p, y, kind="probs") == pytest.approx(0.0, abs=1e-12)


def test_confident_and_always_wrong_ece_equals_the_confidence() -> None:
    p, y = probs_rows(*[(0.9, 1)] * 7)
    assert expected_calibration_error(p, y, kind="probs") == pytest.approx(0.9)


def test_two_bins_weighted_by_their_size() -> None:
    # bin of 0.9: 4 predictions, 2 right -> |0.5 - 0.9| = 0.4; bin of 0.55: 2 right -> 0.45
    p, y = probs_rows((0.9, 0), (0.9, 0), (0.9, 1), (0.9, 1), (0.55, 0), (0.55, 0))
    assert expected_calibration_error(p, y, kind="probs") == pytest.approx((4 * 0.4 + 2 * 0.45) / 6)
    curve = reliability_curve(p, y, kind="probs")
    filled = {i: (curve.accuracy[i], curve.confidence[i]) for i, n in enumerate(curve.counts) if n}
    # 0.9 lies in (13/15, 14/15], 0.55 in (8/15, 9/15]
    assert set(filled) == {13, 8}
    assert filled[13] == pytest.approx((0.5, 0.9)) and filled[8] == pytest.approx((1.0, 0.55))


def test_bin_edges_belong_to_the_bin_below_and_confidence_one_to_the_last() -> None:
    # 5 bins: 0.6 is an edge -> bin (0.4, 0.6] = index 2; 1.0 -> last bin; 0.5 -> index 2
    p, y = probs_rows((0.6, 0), (1.0, 0), (0.5, 1), (0.8, 0))
    curve = reliability_curve(p, y, n_bins=5, kind="probs")
    assert curve.edges == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert curve.counts == [0, 0, 2, 1, 1]  # 0.8 is an edge too: bin (0.6, 0.8]
    assert curve.accuracy[:2] == [None, None] and curve.confidence[:2] == [None, None]
    # bin 2: confidences 0.6 (right) and 0.5 (class 0 by argmax tie -> label 1 is wrong)
    assert curve.accuracy[2] == pytest.approx(0.5) and curve.confidence[2] == pytest.approx(0.55)
    assert curve.accuracy[4] == 1.0 and curve.confidence[4] == 1.0


def test_one_bin_is_the_gap_between_mean_accuracy_and_mean_confidence() -> None:
    logits = torch.randn(200, 7, generator=torch.Generator().manual_seed(1)) * 2
    y = torch.randint(0, 7, (200,), generator=torch.Generator().manual_seed(2))
    probs = torch.softmax(logits.double(), 1)
    gap = (probs.argmax(1) == y).double().mean() - probs.max(1).values.mean()
    assert expected_calibration_error(logits, y, n_bins=1) == pytest.approx(abs(float(gap)))


# --- agreement with an independent implementation ---------------------------------------------


@pytest.mark.parametrize("n_bins", [1, 10, DEFAULT_N_BINS, 37])
@pytest.mark.parametrize("scale", [0.5, 3.0, 20.0])
def test_matches_numpy_definition_on_random_logits(n_bins: int, scale: float) -> None:
    rng = np.random.default_rng(n_bins * 100 + int(scale * 10))
    logits = rng.normal(size=(500, 10)) * scale
    labels = rng.integers(0, 10, size=500)
    labels[:250] = logits[:250].argmax(1)  # half of them right, so accuracy is far from 0.1
    ref, ref_counts = ece_numpy(logits, labels, n_bins)
    curve = reliability_curve(torch.from_numpy(logits), torch.from_numpy(labels), n_bins)
    assert curve.ece == pytest.approx(ref, abs=1e-12)
    assert curve.counts == ref_counts and sum(curve.counts) == curve.n == 500
    assert expected_calibration_error(logits.astype(np.float32), labels, n_bins) == pytest.approx(
        ref, abs=1e-6)  # NumPy float32 input too


def test_probabilities_and_logits_give_the_same_ece() -> None:
    logits = torch.randn(300, 5, generator=torch.Generator().manual_seed(3)) * 4
    y = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(4))
    from_probs = expected_calibration_error(torch.softmax(logits, 1), y, kind="probs")
    assert from_probs == pytest.approx(expected_calibration_error(logits, y), abs=1e-6)
    assert 0 < from_probs < 1


# --- reliability diagram -----------------------------------------------------------------------


def test_reliability_diagram_is_a_valid_png(tmp_path) -> None:
    logits = torch.randn(400, 10, generator=torch.Generator().manual_seed(5)) * 3
    y = torch.randint(0, 10, (400,), generator=torch.Generator().manual_seed(6))
    curves = {"original": reliability_curve(logits, y),
              "k=8": reliability_curve(logits * 0.3, y).to_dict()}  # both forms accepted
    path = plot_reliability_diagram(curves, tmp_path / "sub" / "rel.png")
    data = path.read_bytes()
    assert path == tmp_path / "sub" / "rel.png" and len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    assert data[-8:-4] == b"IEND"


def test_demo_refuses_a_folder_where_it_writes_the_reliability_diagram(tmp_path, capsys) -> None:
    """The diagram is among the demo's output files, so the preflight refuses (before minutes
    of training) an --out where its name is taken by a folder."""
    from msae_plugin.cli import main
    from msae_plugin.demo.vision import OUTPUT_FILES, RELIABILITY_PNG

    assert RELIABILITY_PNG in OUTPUT_FILES
    (tmp_path / RELIABILITY_PNG).mkdir()
    assert main(["demo", "--out", str(tmp_path)]) != 0
    assert f"{RELIABILITY_PNG} is a folder" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()  # nothing started


def test_reliability_diagram_bad_inputs(tmp_path) -> None:
    with pytest.raises(CalibrationError, match="no reliability curves"):
        plot_reliability_diagram({}, tmp_path / "a.png")
    with pytest.raises(CalibrationError, match="is not a reliability curve"):
        plot_reliability_diagram({"x": {"ece": 0.1}}, tmp_path / "a.png")
    curve = reliability_curve(torch.randn(20, 3), torch.randint(0, 3, (20,)))
    with pytest.raises(CalibrationError, match="is a folder"):
        plot_reliability_diagram({"x": curve}, tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        plot_reliability_diagram({"x": curve}, tmp_path / "file" / "a.png")


# --- bad inputs --------------------------------------------------------------------------------

GOOD_LOGITS = torch.randn(6, 3)
GOOD_LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize(
    ("scores", "labels", "kwargs", "match"),
    [
        (GOOD_LOGITS, GOOD_LABELS[:5], {}, r"labels have shape \(5,\) but there are 6"),
        (GOOD_LOGITS, GOOD_LABELS[:, None], {}, r"labels have shape \(6, 1\)"),
        (torch.empty(0, 3), torch.empty(0, dtype=torch.long), {}, "at least one sample"),
        (GOOD_LOGITS[0], GOOD_LABELS, {}, "pass a 2-D"),
        (GOOD_LOGITS[:, :1], GOOD_LABELS * 0, {}, "at least 2 classes"),
        (GOOD_LOGITS.index_put((torch.tensor([2]), torch.tensor([1])), torch.tensor(torch.nan)),
         GOOD_LABELS, {}, r"NaN or inf in 1 row"),
        (GOOD_LOGITS.index_put((torch.tensor([0]), torch.tensor([0])), torch.tensor(torch.inf)),
         GOOD_LABELS, {}, "NaN or inf"),
        (GOOD_LOGITS, GOOD_LABELS.float(), {}, "pass integer class indices"),
        (GOOD_LOGITS, GOOD_LABELS + 1, {}, r"labels range over \[1, 3\] but there are 3 classes"),
        (GOOD_LOGITS, GOOD_LABELS, {"n_bins": 0}, "n_bins=0 is not a positive integer"),
        (GOOD_LOGITS, GOOD_LABELS, {"n_bins": -3}, "n_bins=-3"),
        (GOOD_LOGITS, GOOD_LABELS, {"n_bins": 2.5}, "n_bins=2.5"),
        (GOOD_LOGITS, GOOD_LABELS, {"n_bins": True}, "n_bins=True"),
        (torch.full((6, 3), 0.5), GOOD_LABELS, {"kind": "probs"}, "do not sum to 1"),
        (GOOD_LOGITS, GOOD_LABELS, {"kind": "probs"}, r"outside \[0, 1\]|do not sum to 1"),
        (GOOD_LOGITS, GOOD_LABELS, {"kind": "logit"}, "Did you mean 'logits'"),
        ("not numbers", GOOD_LABELS, {}, "could not be read as a tensor"),
    ],
)
def test_bad_inputs_are_refused(scores, labels, kwargs, match) -> None:
    with pytest.raises(CalibrationError, match=match):
        expected_calibration_error(scores, labels, **kwargs)
    with pytest.raises(CalibrationError, match=match):
        reliability_curve(scores, labels, **kwargs)


def test_calibration_error_is_a_value_error() -> None:
    assert issubclass(CalibrationError, ValueError)


# --- inside zero_shot_accuracy_kept ------------------------------------------------------------


@pytest.fixture(scope="module")
def zero_shot_setup():
    from msae_plugin.embedded.dataset import make_digit_scenes, normalize
    from msae_plugin.embedded.zero_shot import build_zero_shot_classifier
    from msae_plugin.msae.config import MSAEConfig
    from msae_plugin.msae.sae import MSAE
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP

    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip")
    scenes = make_digit_scenes(96, split="test", seed=21)
    torch.manual_seed(0)
    cfg = MSAEConfig(d_in=model.cfg.d_model, d_sae=64, k_start=16, default_k=32)
    cfg.metadata.hook_name = HOOK
    sae = MSAE(cfg).eval()  # untrained: its reconstructions change the logits a lot
    classifier = build_zero_shot_classifier(model, model.tokenizer)
    return model, sae, normalize(scenes.images), scenes.labels, classifier


def test_zero_shot_ece_of_original_matches_the_models_own_logits(zero_shot_setup) -> None:
    from msae_plugin.embedded.zero_shot import zero_shot_logits
    from msae_plugin.vision.evaluation import ladder_levels, zero_shot_accuracy_kept

    model, sae, images, labels, classifier = zero_shot_setup
    res = zero_shot_accuracy_kept(model, sae, images, labels, classifier, batch_size=40)
    assert ladder_levels(res) == ["k=16", "k=32", "k=64", "relu"]
    scale = float(model.clip.logit_scale.detach().exp())  # the tiny CLIP's learned temperature, ~25.9
    assert res["calibration"]["logit_scale"] == pytest.approx(scale)
    assert res["calibration"]["n_bins"] == DEFAULT_N_BINS
    with torch.no_grad():
        logits = zero_shot_logits(model.clip.encode_image(images), classifier, scale)
    ref, ref_counts = ece_numpy(logits.double().numpy(), labels.numpy(), DEFAULT_N_BINS)
    assert res["original_ece"] == pytest.approx(ref, abs=1e-5)
    curves = res["calibration"]["reliability"]
    assert set(curves) == {"original", *ladder_levels(res)}
    assert curves["original"]["counts"] == ref_counts
    for key in ladder_levels(res):
        assert 0 <= res[key]["ece"] <= 1
        assert curves[key]["ece"] == res[key]["ece"] and sum(curves[key]["counts"]) == 96
    # the spliced level, recomputed independently of the evaluation loop
    sae.set_default_k(16)
    with torch.no_grad():
        feats = model.run_with_saes(images, saes=[sae], use_error_term=False,
                                    return_type="normalized")
    sae.set_default_k(32)
    ref16, _ = ece_numpy((scale * feats @ classifier.T).double().numpy(), labels.numpy(), 15)
    assert res["k=16"]["ece"] == pytest.approx(ref16, abs=1e-5)
    assert res["k=16"]["ece"] != pytest.approx(res["original_ece"], abs=1e-3)  # not a copy
    assert sae.cfg.default_k == 32


def test_zero_shot_ece_adds_no_forward_pass_and_honours_bins_and_scale(
    zero_shot_setup, monkeypatch
) -> None:
    from msae_plugin.vision.evaluation import zero_shot_accuracy_kept

    model, sae, images, labels, classifier = zero_shot_setup
    calls = {"spliced": 0}
    real = model.run_with_saes

    def counting(*args, **kwargs):
        calls["spliced"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "run_with_saes", counting)
    res = zero_shot_accuracy_kept(model, sae, images, labels, classifier, ks=[16, None],
                                  batch_size=48, n_bins=4, logit_scale=100.0)
    assert calls["spliced"] == 2 * 2  # two levels, two batches each: one pass per batch
    assert res["calibration"]["n_bins"] == 4 and res["calibration"]["logit_scale"] == 100.0
    assert all(len(c["counts"]) == 4 for c in res["calibration"]["reliability"].values())
    with torch.no_grad():
        feats = model(images, return_type="normalized")
    ref, _ = ece_numpy((100.0 * feats @ classifier.T).double().numpy(), labels.numpy(), 4)
    assert res["original_ece"] == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_bins": 0}, CalibrationError, "n_bins=0"),
        ({"logit_scale": 0.0}, CalibrationError, "logit_scale=0.0 is not a finite positive"),
        ({"logit_scale": float("nan")}, CalibrationError, "logit_scale=nan"),
    ],
)
def test_zero_shot_calibration_bad_arguments_fail_before_any_forward_pass(
    zero_shot_setup, monkeypatch, kwargs, error, match
) -> None:
    from msae_plugin.vision.evaluation import zero_shot_accuracy_kept

    model, sae, images, labels, classifier = zero_shot_setup

    def forbidden(*args, **kwargs):
        raise AssertionError("a forward pass ran before the arguments were checked")

    monkeypatch.setattr(model, "run_with_saes", forbidden)
    monkeypatch.setattr(type(model), "forward", forbidden)
    with pytest.raises(error, match=match):
        zero_shot_accuracy_kept(model, sae, images, labels, classifier, **kwargs)


def test_reliability_curve_dict_round_trip() -> None:
    curve = reliability_curve(torch.randn(50, 4), torch.randint(0, 4, (50,)))
    assert isinstance(curve, ReliabilityCurve)
    assert ReliabilityCurve(**curve.to_dict()) == curve
