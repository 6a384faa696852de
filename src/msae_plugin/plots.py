"""PNG plots of evaluation curves: FVU and cosine similarity against L0, one curve per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msae_plugin.metrics import curve


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
    keys = [k for k in zero_shot if k != "original"]
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
