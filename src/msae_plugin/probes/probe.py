"""Linear probes with Hewitt & Liang (2019) control tasks.

Why a control task: a held-out accuracy alone cannot tell whether a representation *encodes* a
property or whether a probe is just expressive enough to memorise it. Hewitt & Liang give every
input *type* a random label (the same label wherever the type occurs) and fit the same probe to
those labels; what the probe reaches there is memorisation capacity. ``selectivity = accuracy -
control accuracy`` is the part of the accuracy the representation explains beyond that.

The probe is scikit-learn's multinomial ``LogisticRegression`` on standardised features (the
scaler is fitted on the training split only), so the numbers here are the ones an independent
sklearn fit gives on the same split (tests/test_probes.py checks that).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from msae_plugin.errors import ProbeInputError

#: fewest samples per split: below this a held-out accuracy is mostly noise
MIN_SPLIT = 2


@dataclass(frozen=True)
class ProbeResult:
    """Held-out accuracy of the real and of the control probe, and their difference."""

    accuracy: float
    control_accuracy: float | None
    selectivity: float | None
    n_train: int
    n_test: int
    n_classes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ProbeInputError(f"{name} cannot be read as an array ({exc}); pass a tensor or "
                              "a numpy array") from None


def check_inputs(features: Any, labels: Any, types: Any = None) -> tuple[np.ndarray, ...]:
    """Validate and convert; every refusal names the problem and the fix."""
    if labels is None:
        raise ProbeInputError("labels are missing (None); pass one class label per row of "
                              "features")
    x = _as_numpy(features, "features")
    y = _as_numpy(labels, "labels")
    if x.ndim != 2:
        raise ProbeInputError(f"features must be a 2-D [n_samples, n_features] matrix, got shape "
                              f"{tuple(x.shape)}; pool or flatten token dimensions first")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise ProbeInputError("features contain NaN/inf or are not numeric; drop or fix those "
                              "rows before probing")
    if y.ndim != 1 or len(y) != len(x):
        raise ProbeInputError(f"labels have shape {tuple(y.shape)} but features have {len(x)} "
                              f"rows; pass exactly one label per row (shape [{len(x)}])")
    classes = np.unique(y)
    if len(classes) < 2:
        only = classes[0] if len(classes) else "none"
        raise ProbeInputError(f"the property has a single class ({only!r}) in these "
                              f"{len(y)} samples, so there is nothing to probe; use more or "
                              "more varied samples, or drop the property")
    t = None
    if types is not None:
        t = _as_numpy(types, "types")
        if t.ndim != 1 or len(t) != len(x):
            raise ProbeInputError(f"types have shape {tuple(t.shape)} but features have "
                                  f"{len(x)} rows; pass one type id per row, or types=None")
    return x.astype(np.float64), y, t


def control_labels(labels: np.ndarray, types: np.ndarray | None, seed: int) -> np.ndarray:
    """Hewitt & Liang control labels: each distinct type gets one label drawn from the
    empirical label distribution, shared by every sample of that type. ``types=None`` makes
    every sample its own type (a plain random relabelling)."""
    rng = np.random.default_rng([seed, 7919])
    if types is None:
        types = np.arange(len(labels))
    uniq, inverse = np.unique(types, return_inverse=True)
    per_type = rng.choice(labels, size=len(uniq), replace=True)
    return per_type[inverse]


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(n)`` (the same for the real and the control probe)."""
    if not 0.0 < float(test_fraction) < 1.0:
        raise ProbeInputError(f"test_fraction must be strictly between 0 and 1, got "
                              f"{test_fraction!r}; e.g. 0.25")
    n_test = int(round(n * test_fraction))
    if n_test < MIN_SPLIT or n - n_test < MIN_SPLIT:
        raise ProbeInputError(f"{n} samples with test_fraction={test_fraction} leave "
                              f"{n - n_test} for training and {n_test} for testing; use more "
                              f"samples (at least {MIN_SPLIT} in each split)")
    perm = np.random.default_rng([seed, 104729]).permutation(n)
    return perm[n_test:], perm[:n_test]


def fit_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
                 *, c: float = 1.0, max_iter: int = 2000) -> float:
    """Held-out accuracy of a logistic regression fitted on ``train`` (features standardised
    with training-split statistics). A training split with one class predicts that class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if len(np.unique(y[train])) < 2:
        return float(np.mean(y[test] == y[train][0]))
    # one BLAS thread: these fits are small, and with torch's OpenMP pool alive next to
    # OpenBLAS's, multi-threaded lbfgs ran ~50x slower in our measurements (busy 2-core CPU)
    with threadpool_limits(1):
        scaler = StandardScaler().fit(x[train])
        clf = LogisticRegression(C=c, max_iter=max_iter)
        clf.fit(scaler.transform(x[train]), y[train])
        return float(clf.score(scaler.transform(x[test]), y[test]))


def probe(features: Any, labels: Any, *, types: Any = None, test_fraction: float = 0.25,
          seed: int = 0, control: bool = True, c: float = 1.0) -> ProbeResult:
    """Fit a linear probe for ``labels`` on ``features`` and report held-out accuracy.

    ``types`` (one id per row) defines the control task's types; ``None`` treats every row as
    its own type. The control probe uses the same split, features and regularisation ``c``.
    """
    x, y, t = check_inputs(features, labels, types)
    train, test = split_indices(len(x), test_fraction, seed)
    acc = fit_accuracy(x, y, train, test, c=c)
    ctrl = sel = None
    if control:
        ctrl = fit_accuracy(x, control_labels(y, t, seed), train, test, c=c)
        sel = acc - ctrl
    return ProbeResult(accuracy=acc, control_accuracy=ctrl, selectivity=sel,
                       n_train=len(train), n_test=len(test), n_classes=len(np.unique(y)))
