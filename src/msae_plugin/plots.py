"""PNG plots of evaluation curves: FVU and cosine similarity against L0, one curve per model;
zero-shot accuracy kept across the k ladder; reliability diagrams (calibration)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msae_plugin.calibration import ReliabilityCurve
from msae_plugin.errors import CalibrationError
from msae_plugin.metrics import curve
from msae_plugin.preflight import ensure_writable_dir


def plot_sparsity_tradeoff(
    results_by_model: dict[str, dict[str, Any]], path: str | Path, title: str = ""
) -> Path:
    """Write a two-panel PNG (FVU vs L0, cosine vs L0; log-x) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_fvu, ax_cos) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, results in results_by_model.items():
        rows = curve(results)
        l0 = [max(r["l0"], 1e-3) for r in rows]
        line = ax_fvu.plot(l0, [r["fvu"] for r in rows], marker="o", label=name)[0]
        ax_cos.plot(l0, [r["cossim"] for r in rows], marker="o", color=line.get_color(), label=name)
        for r, x in zip(rows, l0, strict=True):
            if r["mode"] == "relu":
                ax_fvu.annotate("ReLU", (x, r["fvu"]), textcoords="offset points", xytext=(4, 4),
                                fontsize=8)
    for ax, ylabel in ((ax_fvu, "FVU (lower is better)"), (ax_cos, "cosine similarity")):
        ax.set_xscale("log")
        ax.set_xlabel("L0 (active latents per sample)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_zero_shot_kept(
    zero_shot: dict[str, Any], recon: dict[str, Any], path: str | Path, title: str = ""
) -> Path:
    """Zero-shot accuracy with the SAE spliced in, against L0 (one point per k), with the
    original model's accuracy as a dashed line. ``zero_shot`` is the output of
    :func:`msae_plugin.vision.evaluation.zero_shot_accuracy_kept`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from msae_plugin.vision.evaluation import ladder_levels

    keys = ladder_levels(zero_shot)
    l0 = [max(recon[k]["sparsity"]["l0"], 1e-3) if k in recon else float("nan") for k in keys]
    acc = [zero_shot[k]["accuracy"] for k in keys]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(l0, acc, marker="o", label="SAE reconstruction spliced in")
    for x, y, k in zip(l0, acc, keys, strict=True):
        ax.annotate(k, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.axhline(zero_shot["original"], ls="--", color="grey", label="original model")
    ax.set_xscale("log")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("zero-shot accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Zero-shot accuracy kept across the k ladder")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability_diagram(
    curves: Mapping[str, ReliabilityCurve | Mapping[str, Any]], path: str | Path, title: str = ""
) -> Path:
    """Reliability diagram: accuracy against mean confidence per bin, one line per curve (e.g.
    the original model and the SAE spliced at each k), the diagonal being perfect calibration;
    below it, the share of samples per bin (where the curve is worth reading). ECE in the legend;
    a curve labelled ``"original"`` is drawn in black, on top.

    ``curves`` maps a label to a :class:`~msae_plugin.calibration.ReliabilityCurve` or its
    ``to_dict()`` (as stored in ``zero_shot_accuracy_kept(...)["calibration"]["reliability"]``).
    Returns the PNG's path."""
    if not curves:
        raise CalibrationError(
            "no reliability curves to plot; pass a dict {label: reliability_curve(...)}."
        )
    rows = {name: c.to_dict() if isinstance(c, ReliabilityCurve) else dict(c)
            for name, c in curves.items()}
    for name, c in rows.items():
        if not {"edges", "counts", "accuracy", "confidence", "ece"} <= set(c):
            raise CalibrationError(
                f"curve {name!r} is not a reliability curve (keys {sorted(c)}); pass "
                "msae_plugin.calibration.reliability_curve(...) or its to_dict()."
            )
    path = Path(path)
    if path.is_dir():
        raise CalibrationError(f"{path} is a folder; pass a file path ending in .png.")
    ensure_writable_dir(path.parent, f"the folder of {path}", "Pass a path in a writable folder.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_n) = plt.subplots(
        2, 1, figsize=(6.2, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for name, c in rows.items():
        pts = [(cf, a) for cf, a in zip(c["confidence"], c["accuracy"], strict=True)
               if cf is not None and a is not None]
        style = {"color": "black", "lw": 2.2, "zorder": 3} if name == "original" else {}
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4,
                       label=f"{name} (ECE {c['ece']:.3f})", **style)[0]
        total = max(sum(c["counts"]), 1)
        ax_n.stairs([n / total for n in c["counts"]], c["edges"], color=line.get_color())
    ax.set_ylabel("accuracy in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    n_bins = len(next(iter(rows.values()))["counts"])
    ax.set_title(title or f"Reliability diagram ({n_bins} equal-width confidence bins)")
    ax_n.set_xlabel("confidence (top-class probability)")
    ax_n.set_ylabel("share of samples")
    ax_n.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
