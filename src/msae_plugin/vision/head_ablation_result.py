"""The result of an attention-head ablation scan: per-head loss/accuracy changes, ranking,
JSON round trip, a markdown table and a heat map.

Kept apart from :mod:`msae_plugin.vision.head_ablation` (which runs the scan) because a result is
also what a user loads back from ``heads_{mode}.json`` and reports on without a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from msae_plugin.errors import ModelInputError


class HeadScore(NamedTuple):
    """One head's effect: ``delta_loss`` (ablated - baseline loss, nats) and ``delta_acc``
    (ablated - baseline accuracy, a fraction in [-1, 1])."""

    layer: int
    head: int
    delta_loss: float
    delta_acc: float


@dataclass
class HeadAblationResult:
    """Outcome of :func:`head_ablation_scan`.

    ``delta_loss`` / ``delta_acc`` are ``[n_layers, n_heads]``; rows of layers that were not
    scanned are NaN. Accuracies are fractions (0.95 = 95 %); losses are mean cross-entropy in
    nats of the zero-shot logits ``logit_scale * cos(image, class)``.
    """

    mode: str
    model_name: str
    n_images: int
    n_layers: int
    n_heads: int
    layers: list[int]
    logit_scale: float
    baseline_loss: float
    baseline_acc: float
    delta_loss: torch.Tensor
    delta_acc: torch.Tensor
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ views
    @property
    def ablated_loss(self) -> torch.Tensor:
        return self.baseline_loss + self.delta_loss

    @property
    def ablated_acc(self) -> torch.Tensor:
        return self.baseline_acc + self.delta_acc

    def top(self, n: int = 10, by: str = "loss") -> list[HeadScore]:
        """The ``n`` most important heads: largest loss increase (``by="loss"``) or largest
        accuracy drop (``by="acc"``); ties broken by the other measure, then by position."""
        if by not in ("loss", "acc"):
            raise ModelInputError(f"by must be 'loss' or 'acc', got {by!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ModelInputError(
                f"n (the number of heads to list) must be a positive integer, got {n!r}"
            )
        scores = [
            HeadScore(layer, h, float(self.delta_loss[layer, h]), float(self.delta_acc[layer, h]))
            for layer in self.layers
            for h in range(self.n_heads)
        ]
        if by == "loss":
            scores.sort(key=lambda s: (-s.delta_loss, s.delta_acc, s.layer, s.head))
        else:
            scores.sort(key=lambda s: (s.delta_acc, -s.delta_loss, s.layer, s.head))
        return scores[:n]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        def grid(t: torch.Tensor) -> list[list[float | None]]:
            return [[None if math.isnan(v) else v for v in row] for row in t.tolist()]

        return {
            "mode": self.mode,
            "model_name": self.model_name,
            "n_images": self.n_images,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "layers": list(self.layers),
            "logit_scale": self.logit_scale,
            "baseline_loss": self.baseline_loss,
            "baseline_acc": self.baseline_acc,
            "delta_loss": grid(self.delta_loss),
            "delta_acc": grid(self.delta_acc),
            "top_by_loss": [s._asdict() for s in self.top(10)],
            "seconds": self.seconds,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadAblationResult:
        def tensor(rows: list[list[float | None]]) -> torch.Tensor:
            return torch.tensor(
                [[math.nan if v is None else v for v in row] for row in rows], dtype=torch.float64
            )

        return cls(
            mode=d["mode"],
            model_name=d["model_name"],
            n_images=d["n_images"],
            n_layers=d["n_layers"],
            n_heads=d["n_heads"],
            layers=list(d["layers"]),
            logit_scale=d["logit_scale"],
            baseline_loss=d["baseline_loss"],
            baseline_acc=d["baseline_acc"],
            delta_loss=tensor(d["delta_loss"]),
            delta_acc=tensor(d["delta_acc"]),
            seconds=d.get("seconds", 0.0),
            extra=d.get("extra", {}),
        )

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (NaN cells as ``null``); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> HeadAblationResult:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_markdown(self, top: int = 10) -> str:
        """Markdown report: baseline, a layer x head table of each delta, the top heads."""
        heads = range(self.n_heads)
        head_cols = " | ".join(f"H{h}" for h in heads)
        rule = "|---" * (self.n_heads + 1) + "|"

        def table(values: torch.Tensor, fmt: Callable[[float], str]) -> list[str]:
            lines = [f"| layer | {head_cols} |", rule]
            for layer in self.layers:
                cells = " | ".join(fmt(float(values[layer, h])) for h in heads)
                lines.append(f"| {layer} | {cells} |")
            return lines

        lines = [
            f"## Attention-head ablation ({self.mode}) of {self.model_name}",
            "",
            f"{self.n_images} images, zero-shot logit scale {self.logit_scale:.4g}. Baseline: "
            f"loss {self.baseline_loss:.4f}, accuracy {100 * self.baseline_acc:.2f} %.",
            "",
            "### Change of zero-shot loss (ablated - baseline, nats)",
            "",
            *table(self.delta_loss, lambda v: f"{v:+.4f}"),
            "",
            "### Change of zero-shot accuracy (ablated - baseline, percentage points)",
            "",
            *table(self.delta_acc, lambda v: f"{100 * v:+.2f}"),
            "",
            f"### Top {min(top, len(self.layers) * self.n_heads)} heads by loss increase",
            "",
            "| rank | layer | head | delta loss | delta acc (pp) |",
            "|---|---|---|---|---|",
        ]
        for i, s in enumerate(self.top(top), 1):
            lines.append(
                f"| {i} | {s.layer} | {s.head} | {s.delta_loss:+.4f} | {100 * s.delta_acc:+.2f} |"
            )
        return "\n".join(lines) + "\n"

    def plot_heatmap(self, path: str | Path, annotate: bool | None = None) -> Path:
        """Two-panel PNG heat map (loss change, accuracy change; layer x head) with colour bars.
        Drawn on an Agg canvas without touching pyplot's global backend."""
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if annotate is None:
            annotate = self.n_layers * self.n_heads <= 256
        w = min(max(4.0, 0.55 * self.n_heads + 2.5), 14.0)
        h = min(max(3.0, 0.45 * self.n_layers + 1.8), 12.0)
        fig = Figure(figsize=(2 * w, h))
        FigureCanvasAgg(fig)
        panels = (  # red = the ablation hurts, in both panels
            (self.delta_loss, "change of zero-shot loss", "nats", "RdBu_r", 1.0, "{:+.3f}"),
            (self.delta_acc, "change of zero-shot accuracy", "percentage points", "RdBu", 100.0,
             "{:+.1f}"),
        )
        for i, (values, title, unit, cmap_name, factor, fmt) in enumerate(panels):
            ax = fig.add_subplot(1, 2, i + 1)
            data = (values.double() * factor).numpy()
            finite = data[~torch.isnan(values).numpy()]
            lim = float(abs(finite).max()) if finite.size else 1.0
            lim = lim if lim > 0 else 1.0
            cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="lightgrey")  # unscanned
            im = ax.imshow(data, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto",
                           interpolation="nearest")
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(self.n_heads))
            ax.set_yticks(range(self.n_layers))
            ax.set_title(title, fontsize=10)
            cbar = fig.colorbar(im, ax=ax)
            cbar.set_label(f"ablated - baseline ({unit})", fontsize=8)
            if annotate:
                for layer in self.layers:
                    for head in range(self.n_heads):
                        v = data[layer, head]
                        ax.text(head, layer, fmt.format(v), ha="center", va="center",
                                fontsize=7, color="white" if abs(v) > 0.6 * lim else "black")
        fig.suptitle(
            f"{self.mode}-ablation of attention heads, {self.model_name} ({self.n_images} images; "
            f"baseline loss {self.baseline_loss:.3f}, acc {100 * self.baseline_acc:.1f} %)",
            fontsize=10,
        )
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return path
