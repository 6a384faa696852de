"""Calibration of a classifier: expected calibration error (ECE) and reliability curves.

Why a module of its own, at the top of the package: accuracy says how often the top class is
right, calibration says whether the classifier's confidence can be believed. Splicing an SAE
reconstruction into a model can keep the accuracy and still make the model over- or
under-confident, so the zero-shot evaluation reports both. Nothing here is vision-specific: the
functions take ``[N, C]`` scores of any classifier and ``N`` integer labels.

Definition (Guo et al. 2017, "On Calibration of Modern Neural Networks"): with ``M`` bins
B_1..B_M over the confidence (the top-class probability) of N predictions,

    ECE = Σ_m |B_m| / N · |acc(B_m) − conf(B_m)|

where acc(B_m) is the fraction of correct predictions in the bin and conf(B_m) their mean
confidence. Conventions, fixed so results compare across runs:

* ``M = 15`` equal-width bins by default (:data:`DEFAULT_N_BINS`), edges ``i / M``;
* bin m holds confidences in ``((m−1)/M, m/M]``: an edge belongs to the bin below it, a
  confidence of exactly 1.0 falls in the last bin, and the first bin also takes 0 (a top-class
  probability is at least 1/C, so 0 never occurs in practice);
* empty bins add nothing to the ECE; their accuracy and confidence are reported as ``None``;
* the prediction is the first class of maximal score (``argmax``), its confidence the maximal
  probability; logits are turned into probabilities by a softmax in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from msae_plugin.errors import CalibrationError
from msae_plugin.names import suggest

DEFAULT_N_BINS = 15
KINDS = ("logits", "probs")
#: tolerance on a probability row's sum (float32 softmax outputs are off by ~1e-7)
PROB_SUM_ATOL = 1e-4


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin statistics of :func:`reliability_curve`; ``accuracy`` / ``confidence`` are
    ``None`` for empty bins. ``edges`` has ``n_bins + 1`` entries, ``i / n_bins``."""

    edges: list[float]
    counts: list[int]
    accuracy: list[float | None]
    confidence: list[float | None]
    n: int
    ece: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``None`` rather than NaN for empty bins, so the file stays valid JSON)."""
        return {
            "edges": self.edges, "counts": self.counts, "accuracy": self.accuracy,
            "confidence": self.confidence, "n": self.n, "ece": self.ece,
        }


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    try:
        return torch.as_tensor(x).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CalibrationError(
            f"{what} could not be read as a tensor ({exc}); pass a torch tensor or NumPy array."
        ) from None


def check_n_bins(n_bins: Any) -> int:
    """``n_bins`` if it is an integer ≥ 1 (callers check it before any expensive work)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise CalibrationError(
            f"n_bins={n_bins!r} is not a positive integer; pass the number of equal-width "
            f"confidence bins, e.g. n_bins={DEFAULT_N_BINS} (the documented default)."
        )
    return n_bins


def confidences_and_correct(
    scores: Any, labels: Any, kind: Literal["logits", "probs"] = "logits"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``[N, C]`` scores and ``N`` labels; return the float64 top-class probability and
    a boolean "prediction is right" per sample. Every check of this module lives here so the
    ECE and the curve refuse exactly the same inputs."""
    if kind not in KINDS:
        raise CalibrationError(
            f"kind={kind!r} is not one of {KINDS}.{suggest(str(kind), KINDS)} Pass 'logits' for "
            "unnormalised scores (a softmax is applied) or 'probs' for rows that sum to 1."
        )
    s = _as_tensor(scores, kind)
    y = _as_tensor(labels, "labels")
    if s.ndim != 2:
        raise CalibrationError(
            f"{kind} have shape {tuple(s.shape)}; pass a 2-D [n_samples, n_classes] tensor."
        )
    if s.shape[0] == 0:
        raise CalibrationError(
            "no predictions (0 rows): calibration needs at least one sample; pass a non-empty "
            "batch."
        )
    if s.shape[1] < 2:
        raise CalibrationError(
            f"{kind} have {s.shape[1]} class column(s); a classifier needs at least 2 classes "
            "(pass [n_samples, n_classes] scores, not one score per sample)."
        )
    if not (s.is_floating_point() or s.dtype in (torch.int32, torch.int64)):
        raise CalibrationError(f"{kind} have dtype {s.dtype}; pass real-valued scores.")
    if y.ndim != 1 or y.shape[0] != s.shape[0]:
        raise CalibrationError(
            f"labels have shape {tuple(y.shape)} but there are {s.shape[0]} predictions; pass one "
            "integer class index per row of the scores."
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise CalibrationError(
            f"labels have dtype {y.dtype}; pass integer class indices (e.g. labels.long())."
        )
    if int(y.min()) < 0 or int(y.max()) >= s.shape[1]:
        raise CalibrationError(
            f"labels range over [{int(y.min())}, {int(y.max())}] but there are {s.shape[1]} "
            f"classes; pass class indices in [0, {s.shape[1] - 1}]."
        )
    s = s.double()
    if not torch.isfinite(s).all():
        bad = int((~torch.isfinite(s)).any(dim=1).sum())
        raise CalibrationError(
            f"{kind} contain NaN or inf in {bad} row(s); calibration is undefined for them. Find "
            "where they come from (or drop those rows) before measuring calibration."
        )
    if kind == "logits":
        probs = torch.softmax(s, dim=1)
    else:
        if (s < 0).any() or (s > 1).any():
            raise CalibrationError(
                "probabilities outside [0, 1]; pass kind='logits' if these are unnormalised "
                "scores."
            )
        worst = float((s.sum(dim=1) - 1).abs().max())
        if worst > PROB_SUM_ATOL:
            raise CalibrationError(
                f"probability rows do not sum to 1 (off by up to {worst:.3g}); pass "
                "kind='logits' if these are unnormalised scores, or normalise each row."
            )
        probs = s
    conf, pred = probs.max(dim=1)
    return conf, pred == y.long()


def reliability_curve(
    scores: Any,
    labels: Any,
    n_bins: int = DEFAULT_N_BINS,
    kind: Literal["logits", "probs"] = "logits",
) -> ReliabilityCurve:
    """Counts, accuracy and mean confidence per equal-width confidence bin, and the ECE.

    ``scores`` is ``[N, C]`` (logits by default, ``kind="probs"`` for probabilities); bins and
    edge conventions are those of the module docstring."""
    n_bins = check_n_bins(n_bins)
    conf, correct = confidences_and_correct(scores, labels, kind)
    edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins
    # right=False: index i such that edges[i] < conf <= edges[i+1]; 0 and 1.0 clamp inside
    idx = torch.bucketize(conf, edges[1:-1], right=False)
    counts = torch.bincount(idx, minlength=n_bins)
    sum_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    sum_acc = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct.double())
    n = int(conf.shape[0])
    ece = float((sum_acc - sum_conf).abs().sum() / n)  # Σ |B|/N · |acc − conf|
    filled = counts > 0
    acc = torch.where(filled, sum_acc / counts.clamp_min(1), torch.nan)
    mean_conf = torch.where(filled, sum_conf / counts.clamp_min(1), torch.nan)
    return ReliabilityCurve(
        edges=edges.tolist(),
        counts=[int(c) for c in counts],
        accuracy=[float(a) if f else None for a, f in zip(acc, filled, strict=True)],
        confidence=[float(c) if f else None for c, f in zip(mean_conf, filled, strict=True)],
        n=n,
        ece=ece,
    )


def expected_calibration_error(
    scores: Any,
    labels: Any,
    n_bins: int = DEFAULT_N_BINS,
    kind: Literal["logits", "probs"] = "logits",
) -> float:
    """ECE of top-class predictions, in [0, 1] (0 = perfectly calibrated); see the module
    docstring for the definition and the bin conventions (15 equal-width bins by default)."""
    return reliability_curve(scores, labels, n_bins, kind).ece
