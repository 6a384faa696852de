"""Figures of a remapping comparison (PNG): firing statistics of the two models, the masking
curves, the class-level count scatter with the three groups, and a per-patch view of one image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from msae_plugin.remapping.counts import n_base_tokens, sae_codes


def _plt():
    import logging

    import matplotlib

    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # no font-fallback noise

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_statistics(result: Any, path: str | Path) -> Path:
    """Per latent: firing frequency and mean activation on base (x) vs adapted (y), held-out
    images; latents that appear / vanish / change most are marked."""
    plt = _plt()
    b, a = result.names
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, (what, fn) in zip(axes, (("firing frequency (per token)", lambda s: s.freq),
                                     ("mean activation when firing", lambda s: s.mean_active)),
                              strict=True):
        x, y = fn(result.test[b]).numpy(), fn(result.test[a]).numpy()
        ax.scatter(x, y, s=5, alpha=0.5, color="tab:blue", label="latents")
        for key, colour in (("change_most", "tab:red"), ("appear", "tab:green"),
                            ("vanish", "tab:orange")):
            ids = result.shifts[key]
            if ids:
                ax.scatter(x[ids], y[ids], s=18, color=colour, label=key.replace("_", " "))
        hi = max(float(x.max(initial=0)), float(y.max(initial=0))) or 1.0
        ax.plot([0, hi], [0, hi], "k--", lw=0.8)
        if what.startswith("firing"):
            ax.set_xscale("symlog", linthresh=1e-4)
            ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_xlabel(f"{b}: {what}")
        ax.set_ylabel(f"{a}: {what}")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"one SAE at {result.hook} on {b} and {a}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_masking(result: Any, path: str | Path) -> Path:
    """Mean accuracy vs k for on / off masking with class-wise, random and dataset-level
    selections, for each model and split; dashed: original model, dotted: SAE spliced."""
    plt = _plt()
    splits = [("base classes", result.base_classes)]
    if result.novel_classes:
        splits.append(("novel classes", result.novel_classes))
    models = list(result.names)
    fig, axes = plt.subplots(len(splits), len(models), figsize=(5.2 * len(models),
                                                                 3.8 * len(splits)),
                             squeeze=False)
    styles = {"class": "tab:red", "random": "tab:gray", "dataset": "tab:blue"}
    for r, (title, cls) in enumerate(splits):
        for c, m in enumerate(models):
            ax = axes[r][c]
            curve = result.curves[m]
            means = curve.mean(cls)
            for (sel, mode) in curve.curves:
                ax.plot(curve.ks, means[f"{mode}_{sel}"], marker="o", ms=3,
                        color=styles.get(sel, "k"), ls="-" if mode == "on" else "--",
                        label=f"{mode} {sel} top-k")
            ax.axhline(means["original"], color="k", ls="--", lw=0.8, label="no SAE")
            ax.axhline(means["on_all"], color="k", ls=":", lw=0.8, label="SAE, no mask")
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("k (latents per class)")
            ax.set_ylabel("accuracy")
            ax.set_title(f"{m}, {title}", fontsize=10)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_groups(result: Any, class_id: int, path: str | Path) -> Path:
    """Class-level counts of one class: base (x) vs adapted (y), the three groups coloured."""
    plt = _plt()
    b, a = result.names
    x = result.train[b].counts[class_id].numpy()
    y = result.train[a].counts[class_id].numpy()
    fig, ax = plt.subplots(figsize=(5, 4.6))
    ax.scatter(x, y, s=6, alpha=0.4, color="tab:gray", label="other")
    members = result.groups.members[class_id]
    for key, colour in (("high", "tab:purple"), ("high_to_low", "tab:orange"),
                        ("low_to_high", "tab:green")):
        ids = members[key]
        if ids:
            ax.scatter(x[ids], y[ids], s=16, color=colour,
                       label=f"{key.replace('_', ' ')} ({len(ids)})")
    hi = max(float(x.max(initial=0)), float(y.max(initial=0))) or 1.0
    ax.plot([0, hi], [0, hi], "k--", lw=0.8)
    ax.set_xlabel(f"{b}: active (image, token) pairs")
    ax.set_ylabel(f"{a}: active (image, token) pairs")
    ax.set_title(f"class {result.class_names[class_id]!r}, τ = {result.tau}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


@torch.no_grad()
def plot_patch_view(base: Any, adapted: Any, sae: Any, image: torch.Tensor, raw: torch.Tensor,
                    path: str | Path, k: int | None = None, latents: list[int] | None = None,
                    n_latents: int = 4) -> Path:
    """One image: its latents' activations on the patch grid, base (top row) and adapted
    (bottom row), side by side. ``image``: preprocessed ``[3, H, W]``; ``raw``: ``[3, H, W]`` in
    [0, 1] for display. Default latents: those whose image-level activation changes most."""
    from msae_plugin.errors import RemappingError
    from msae_plugin.vision.hook_names import block_of

    plt = _plt()
    hook = str(sae.cfg.metadata.hook_name)
    if block_of(hook) is None:
        raise RemappingError(f"{hook!r} has no patch tokens (one vector per image); the per-patch "
                             "view needs an SAE on a block hook such as blocks.2.hook_resid_post.")
    grids, n_tok = {}, n_base_tokens(base.model)
    gh, gw = base.model.cfg.grid_size
    prefix = int(base.model.cfg.n_prefix_tokens)
    for z in (base, adapted):
        _, cache = z.model.run_with_cache(image[None], names_filter=[hook])
        codes = sae_codes(sae, cache[hook][:, :n_tok], k).float()[0]  # [tokens, d_sae]
        grids[z.name] = codes[prefix:].permute(1, 0).reshape(-1, gh, gw)  # [d_sae, gh, gw]
    if latents is None:
        diff = (grids[adapted.name].mean((1, 2)) - grids[base.name].mean((1, 2))).abs()
        latents = diff.topk(n_latents).indices.tolist()
    fig, axes = plt.subplots(2, len(latents) + 1, figsize=(2.2 * (len(latents) + 1), 4.6),
                             squeeze=False)
    for r, z in enumerate((base, adapted)):
        axes[r][0].imshow(raw.permute(1, 2, 0).clamp(0, 1).numpy())
        axes[r][0].set_title(z.name, fontsize=9)
        for c, j in enumerate(latents, start=1):
            vmax = float(max(grids[base.name][j].max(), grids[adapted.name][j].max(), 1e-6))
            axes[r][c].imshow(grids[z.name][j].numpy(), cmap="viridis", vmin=0, vmax=vmax)
            axes[r][c].set_title(f"latent {j}: {float(grids[z.name][j].mean()):.3f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("latent activations per patch (same colour scale per latent)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
