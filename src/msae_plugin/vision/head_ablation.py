"""Attention-head ablation scan for the hooked CLIP image tower.

For every attention head ``(layer, head)`` of :class:`~msae_plugin.vision.hooked_clip.HookedOpenCLIP`
the head's output ``blocks.{layer}.attn.hook_z[:, :, head]`` is replaced by zero (``mode="zero"``)
or by its mean over the given images at each token position (``mode="mean"``), and the change of
the zero-shot cross-entropy loss and accuracy against the unablated baseline is recorded.

Cost: the baseline runs once. Blocks before the ablated layer do not depend on the ablation, so
each batch's residual stream entering every scanned layer is cached once (``run_with_cache`` on
``blocks.{L}.hook_resid_pre``) and each ablated run resumes from there: a head in layer ``L``
costs ``(n_layers - L) / n_layers`` of a forward pass, about half on average. The resumed path
is checked against the full forward on the first batch and the scan falls back to full forwards
(``run_with_hooks``) if they ever disagree, or when SAEs are spliced into the model.

    from msae_plugin.vision.head_ablation import head_ablation_scan
    res = head_ablation_scan(model, images, labels, classifier, mode="mean")
    print(res.to_markdown()); res.plot_heatmap("heads.png"); res.top(5)
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from msae_plugin.errors import ModelInputError
from msae_plugin.vision.images import check_images

MODES = ("zero", "mean")
_RESUME_TOL = 1e-4  # max |embedding difference| tolerated between resumed and full forward


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


# ---------------------------------------------------------------------- input checks
def _check_inputs(
    model: Any,
    images: torch.Tensor,
    labels: Any,
    classifier: torch.Tensor,
    mode: str,
    layers: Sequence[int] | None,
    batch_size: int,
) -> tuple[torch.Tensor, list[int]]:
    if mode not in MODES:
        raise ModelInputError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ModelInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_images(images, model.cfg.image_size)  # empty batch, dtype, channels, size, NaN
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.is_floating_point():
        raise ModelInputError(
            f"labels must be a 1-D integer tensor of class indices, got dtype {labels.dtype} and "
            f"shape {tuple(labels.shape)}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ModelInputError(
            f"labels has {labels.shape[0]} entries but there are {images.shape[0]} images; pass "
            "one label per image"
        )
    if not isinstance(classifier, torch.Tensor) or classifier.dim() != 2:
        raise ModelInputError(
            "classifier must be a [n_classes, embed_dim] tensor of L2-normalised class text "
            "embeddings (msae_plugin.embedded.zero_shot.build_zero_shot_classifier makes one)"
        )
    n_classes, dim = classifier.shape
    if dim != model.cfg.output_dim:
        raise ModelInputError(
            f"classifier rows have width {dim} but the image embedding has "
            f"{model.cfg.output_dim}; build the classifier with the same CLIP model"
        )
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ModelInputError(
            f"labels must lie in [0, {n_classes - 1}] (the classifier has {n_classes} classes), "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    n_layers = model.cfg.n_layers
    if layers is None:
        chosen = list(range(n_layers))
    else:
        chosen = []
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise ModelInputError(f"layers must be integers, got {layer!r}")
            if not 0 <= layer < n_layers:
                raise ModelInputError(
                    f"layer {layer} is out of range: the image tower has {n_layers} blocks "
                    f"(layers 0..{n_layers - 1})"
                )
            chosen.append(layer)
        chosen = sorted(set(chosen))
        if not chosen:
            raise ModelInputError("layers is empty: pass None to scan every layer")
    return labels.long(), chosen


# ---------------------------------------------------------------------- forward pieces
def _image_tail(model: Any, x: torch.Tensor) -> torch.Tensor:
    """What ``HookedOpenCLIP._forward_image`` does after the last block (ln_post, pool, proj).
    Verified against the full forward on the first batch of every scan."""
    v = model.clip.visual
    if v.final_ln_after_pool:
        pooled, _ = v._global_pool(x)
        pooled = model.hook_ln_post(v.ln_post(pooled))
    else:
        x = model.hook_ln_post(v.ln_post(x))
        pooled, _ = v._global_pool(x)
    if v.proj is not None:
        pooled = pooled @ v.proj
    return model.hook_image_embed(pooled)


def _resume(model: Any, resid_pre: torch.Tensor, layer: int) -> torch.Tensor:
    """Image embedding from the residual stream entering block ``layer``."""
    x = resid_pre
    for block in model.blocks[layer:]:
        x = block(x)
    return _image_tail(model, x)


def _ablation_hook(head: int, value: torch.Tensor | None) -> Callable[..., torch.Tensor]:
    """Hook on ``hook_z`` ``[batch, pos, head, d_head]`` setting one head to 0 or to ``value``
    (``[pos, d_head]``, broadcast over the batch)."""

    def hook(z: torch.Tensor, hook: Any = None) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = 0.0 if value is None else value
        return z

    return hook


def _z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


@torch.no_grad()
def _mean_z(
    model: Any, images: torch.Tensor, layers: list[int], batch_size: int, progress: bool
) -> dict[int, torch.Tensor]:
    """``layer -> [pos, head, d_head]``: mean of ``hook_z`` over all images (one cached pass)."""
    from tqdm.auto import tqdm

    names = [_z_name(layer) for layer in layers]
    sums: dict[int, torch.Tensor] = {}
    for i in tqdm(range(0, images.shape[0], batch_size), desc="mean hook_z", leave=False,
                  disable=not progress):
        x = images[i : i + batch_size].to(device=model.device, dtype=model.dtype)
        _, cache = model.run_with_cache(x, names_filter=names, stop_at_layer=max(layers) + 1)
        for layer in layers:
            s = cache[_z_name(layer)].float().sum(dim=0)
            sums[layer] = s if layer not in sums else sums[layer] + s
        del cache
    return {layer: (s / images.shape[0]).to(model.dtype) for layer, s in sums.items()}


# ---------------------------------------------------------------------- the scan
@torch.no_grad()
def head_ablation_scan(
    model: Any,
    images: torch.Tensor,
    labels: Any,
    classifier: torch.Tensor,
    mode: str = "zero",
    layers: Sequence[int] | None = None,
    batch_size: int = 128,
    progress: bool = True,
    logit_scale: float | None = None,
    resume: bool = True,
) -> HeadAblationResult:
    """Ablate each attention head of the image tower in turn; measure zero-shot loss/accuracy.

    Args:
        model: a :class:`~msae_plugin.vision.hooked_clip.HookedOpenCLIP` (eval mode).
        images: float ``[N, 3, H, W]``, normalised for the model (``model.preprocess``).
        labels: ``[N]`` class indices into ``classifier``.
        classifier: ``[C, embed_dim]`` L2-normalised class text embeddings.
        mode: ``"zero"`` (head output set to 0) or ``"mean"`` (set to its mean over ``images``
            at each position, computed once before the scan).
        layers: blocks to scan (default: all). Other rows of the result are NaN.
        batch_size: images per forward pass.
        progress: show tqdm progress bars.
        logit_scale: temperature of the zero-shot logits; default the model's own
            ``exp(clip.logit_scale)`` (100 if it has none). Accuracy does not depend on it.
        resume: reuse the unablated activations before the ablated layer (exact; about twice as
            fast). ``False`` runs every ablation as a full ``run_with_hooks`` forward.
    """
    from tqdm.auto import tqdm

    labels, layers = _check_inputs(model, images, labels, classifier, mode, layers, batch_size)
    t0 = time.perf_counter()
    if logit_scale is None:
        logit_scale = model.logit_scale()  # exp(clip.logit_scale), 100 if the model has none
    cls_w = classifier.to(device=model.device, dtype=torch.float32)
    n_images, n_layers, n_heads = images.shape[0], model.cfg.n_layers, model.cfg.n_heads
    if resume and getattr(model, "acts_to_saes", None):
        resume = False  # spliced SAEs need the full forward (their token masks are set there)

    def stats(embed: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        logits = logit_scale * F.normalize(embed.float(), dim=-1) @ cls_w.T
        loss = F.cross_entropy(logits, y, reduction="sum")
        return float(loss), int((logits.argmax(dim=-1) == y).sum())

    means = _mean_z(model, images, layers, batch_size, progress) if mode == "mean" else {}
    pairs = [(layer, h) for layer in layers for h in range(n_heads)]
    hooks = {
        (layer, h): _ablation_hook(h, means[layer][:, h] if mode == "mean" else None)
        for layer, h in pairs
    }
    loss_sum = torch.zeros(len(pairs), dtype=torch.float64)
    correct = torch.zeros(len(pairs), dtype=torch.long)
    base_loss, base_correct = 0.0, 0
    resume_checked = False
    max_resume_err = None
    resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in layers]

    n_batches = math.ceil(n_images / batch_size)
    with tqdm(total=n_batches * len(pairs), desc=f"{mode}-ablating heads", unit="head",
              disable=not progress) as pbar:
        for i in range(0, n_images, batch_size):
            x = images[i : i + batch_size].to(device=model.device, dtype=model.dtype)
            y = labels[i : i + batch_size].to(model.device)
            if resume:
                embed, cache = model.run_with_cache(x, names_filter=resid_names)
                resid = {layer: cache[f"blocks.{layer}.hook_resid_pre"] for layer in layers}
                del cache
                if not resume_checked:
                    err = float((_resume(model, resid[layers[0]], layers[0]) - embed).abs().max())
                    max_resume_err, resume_checked = err, True
                    if not err <= _RESUME_TOL * max(1.0, float(embed.abs().max())):
                        warnings.warn(
                            f"resumed forward differs from the full forward by {err:.3g}; "
                            "falling back to full forwards (resume=False)",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                        resume = False
            else:
                embed = model(x)
            b_loss, b_correct = stats(embed, y)
            base_loss += b_loss
            base_correct += b_correct
            for j, (layer, h) in enumerate(pairs):
                name = _z_name(layer)
                if resume:
                    with model.hooks(fwd_hooks=[(name, hooks[layer, h])]):
                        out = _resume(model, resid[layer], layer)
                else:
                    out = model.run_with_hooks(x, fwd_hooks=[(name, hooks[layer, h])])
                j_loss, j_correct = stats(out, y)
                loss_sum[j] += j_loss
                correct[j] += j_correct
                pbar.update(1)
            if resume:
                del resid

    baseline_loss = base_loss / n_images
    baseline_acc = base_correct / n_images
    delta_loss = torch.full((n_layers, n_heads), math.nan, dtype=torch.float64)
    delta_acc = torch.full((n_layers, n_heads), math.nan, dtype=torch.float64)
    for j, (layer, h) in enumerate(pairs):
        delta_loss[layer, h] = float(loss_sum[j]) / n_images - baseline_loss
        delta_acc[layer, h] = int(correct[j]) / n_images - baseline_acc
    return HeadAblationResult(
        mode=mode,
        model_name=getattr(model, "model_name", type(model).__name__),
        n_images=n_images,
        n_layers=n_layers,
        n_heads=n_heads,
        layers=layers,
        logit_scale=logit_scale,
        baseline_loss=baseline_loss,
        baseline_acc=baseline_acc,
        delta_loss=delta_loss,
        delta_acc=delta_acc,
        seconds=round(time.perf_counter() - t0, 3),
        extra={"batch_size": batch_size, "resumed": resume, "resume_check_max_abs_err":
               max_resume_err},
    )
