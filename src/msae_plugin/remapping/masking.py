"""Class-wise on/off masking of SAE latents (PatchSAE §4.1.1), on any ``ZeroShotModel``.

The SAE reconstruction replaces the hook's activation at **every token** (CLS, patches and any
prompt tokens, as in PatchSAE's code), after multiplying the codes by a mask: **on** keeps only
the selected latents, **off** zeroes them. Each test image is masked with the selection of **its
own class** (the protocol uses the label at test time, as the paper's does). Selections: the
class's top-k latents by class-level count on the *training* split, k random latents (alive on
the training split; the random baseline), or the dataset-level top-k. No error term is added
back: "on all" is the plain SAE splice, whose accuracy the curves are read against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from msae_plugin.errors import RemappingError
from msae_plugin.remapping.counts import sae_codes

#: the k values of PatchSAE's code (1 ... 2000, all), cut to d_sae
DEFAULT_KS = (1, 2, 5, 10, 50, 100, 500, 1000, 2000)


def ks_for(d_sae: int, ks: Sequence[int] | None = None) -> list[int]:
    """The k list for an SAE: ``ks`` (default: :data:`DEFAULT_KS` below d_sae) plus d_sae
    ("on all" / "off all"). A given k outside 1..d_sae is refused."""
    if ks is None:
        ks = [k for k in DEFAULT_KS if k < d_sae]
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae]
    if bad:
        raise RemappingError(f"k values {bad} are outside 1..d_sae={d_sae}; pick k <= {d_sae}.")
    return sorted(set(ks) | {d_sae})


def class_top_k(counts: torch.Tensor, k: int) -> torch.Tensor:
    """``[C, k]`` latent ids with the largest class-level counts (ties: lower id)."""
    order = torch.argsort(-counts, dim=1, stable=True)
    return order[:, :k]


def selection_masks(kind: str, counts: torch.Tensor, k: int, alive: torch.Tensor,
                    seed: int = 0) -> torch.Tensor:
    """``[C, d_sae]`` boolean: the latents selected for each class. ``kind``: ``"class"``
    (class top-k), ``"dataset"`` (dataset-level top-k, the same for every class) or ``"random"``
    (k latents drawn per class from the ``alive`` ones)."""
    n_classes, d_sae = counts.shape
    mask = torch.zeros(n_classes, d_sae, dtype=torch.bool)
    if kind == "class":
        mask.scatter_(1, class_top_k(counts, k), True)
    elif kind == "dataset":
        top = torch.argsort(-counts.sum(0), stable=True)[:k]
        mask[:, top] = True
    elif kind == "random":
        pool = alive.nonzero().flatten()
        if len(pool) == 0:
            pool = torch.arange(d_sae)
        g = torch.Generator().manual_seed(seed)
        for c in range(n_classes):
            pick = pool[torch.randperm(len(pool), generator=g)[:k]]
            if len(pick) < k:  # fewer alive latents than k: fill with the others
                rest = torch.tensor([j for j in range(d_sae) if j not in set(pick.tolist())])
                pick = torch.cat([pick, rest[torch.randperm(len(rest), generator=g)[:k - len(pick)]]])
            mask[c, pick] = True
    else:
        raise RemappingError(f"selection must be 'class', 'dataset' or 'random', got {kind!r}")
    return mask


def splice_hook(sae: Any, keep: torch.Tensor | None, k: int | None) -> Callable:
    """A forward hook that replaces the activation by the SAE reconstruction of the codes
    times ``keep`` (``[d_sae]`` or ``[batch, d_sae]`` float/bool; None: no mask)."""

    def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
        z = sae_codes(sae, act, k)
        if keep is not None:
            m = keep.to(z.device, z.dtype)
            z = z * (m[:, None, :] if m.dim() == 2 and z.dim() == 3 else m)
        return sae.decode(z).to(act.dtype)

    return hook


@torch.no_grad()
def per_class_accuracy(zsm: Any, images: torch.Tensor, labels: torch.Tensor, n_classes: int,
                       sae: Any | None = None, masks: torch.Tensor | None = None,
                       k: int | None = None, batch_size: int = 256,
                       codes: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``[C]`` accuracy per class: the plain model (``sae`` None), the SAE spliced (``masks``
    None), or spliced with each image masked by its class's row of ``masks`` ``[C, d_sae]``.
    ``codes``: the SAE codes of each batch at the hook (:func:`hook_codes`), reused across
    masks instead of encoding again (the masked splice ignores the incoming activation)."""
    labels = torch.as_tensor(labels).long()
    correct = torch.zeros(n_classes)
    hook = None if sae is None else str(sae.cfg.metadata.hook_name)
    for b, i in enumerate(range(0, len(images), batch_size)):
        x, y = images[i:i + batch_size], labels[i:i + batch_size]
        if sae is None:
            logits = zsm.logits(x)
        else:
            keep = None if masks is None else masks[y].float()
            fn = (splice_hook(sae, keep, k) if codes is None
                  else cached_splice_hook(sae, codes[b], keep))
            logits = zsm.logits(x, fwd_hooks=[(hook, fn)])
        correct.index_add_(0, y, (logits.argmax(-1).cpu() == y).float())
    totals = torch.bincount(labels, minlength=n_classes).float()
    return correct / totals.clamp(min=1)


@torch.no_grad()
def hook_codes(zsm: Any, sae: Any, images: torch.Tensor, k: int | None,
               batch_size: int = 256) -> list[torch.Tensor]:
    """The SAE codes at its hook for each batch of ``images`` (as ``per_class_accuracy``
    batches them), computed once per model."""
    from msae_plugin.vision.hook_names import block_of

    hook = str(sae.cfg.metadata.hook_name)
    layer = block_of(hook)
    out = []
    for i in range(0, len(images), batch_size):
        _, cache = zsm.model.run_with_cache(images[i:i + batch_size], names_filter=[hook],
                                            stop_at_layer=None if layer is None else layer + 1)
        out.append(sae_codes(sae, cache[hook], k))
    return out


def cached_splice_hook(sae: Any, z: torch.Tensor, keep: torch.Tensor | None) -> Callable:
    """Like :func:`splice_hook`, with the codes given (the activation they came from is the one
    this hook receives: same model, same images, nothing changed upstream)."""

    def hook(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
        zz = z
        if keep is not None:
            m = keep.to(z.device, z.dtype)
            zz = z * (m[:, None, :] if m.dim() == 2 and z.dim() == 3 else m)
        return sae.decode(zz).to(act.dtype)

    return hook


@dataclass
class MaskingCurve:
    """Accuracy per class for every (selection, mode, k) on one model."""

    model: str
    ks: list[int]
    original: torch.Tensor  # [C] no SAE
    on_all: torch.Tensor  # [C] SAE spliced, no mask
    curves: dict[tuple[str, str], torch.Tensor]  # (selection, mode) -> [len(ks), C]

    def mean(self, classes: Sequence[int] | None = None) -> dict[str, Any]:
        idx = list(range(len(self.original))) if classes is None else list(classes)
        out: dict[str, Any] = {"original": float(self.original[idx].mean()),
                               "on_all": float(self.on_all[idx].mean())}
        for (sel, mode), acc in self.curves.items():
            out[f"{mode}_{sel}"] = [float(v) for v in acc[:, idx].mean(1)]
        return out


def masking_curve(
    zsm: Any,
    sae: Any,
    counts: torch.Tensor,
    alive: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] | None = None,
    selections: Sequence[str] = ("class", "random", "dataset"),
    modes: Sequence[str] = ("on", "off"),
    k: int | None = None,
    seed: int = 0,
    progress: Any = None,
) -> MaskingCurve:
    """On/off masking accuracy of ``zsm`` with latents selected from ``counts`` (training
    split, ``[C, d_sae]``) and accuracy on the held-out ``images``."""
    n_classes, d_sae = counts.shape
    for mode in modes:
        if mode not in ("on", "off"):
            raise RemappingError(f"mode must be 'on' or 'off', got {mode!r}")
    present = torch.bincount(torch.as_tensor(labels).long(), minlength=n_classes)
    if (present == 0).any():
        missing = (present == 0).nonzero().flatten().tolist()
        raise RemappingError(f"classes {missing} have no held-out images; every class needs "
                             "examples to measure its accuracy (more images, or fewer classes).")
    k_list = ks_for(d_sae, ks)
    original = per_class_accuracy(zsm, images, labels, n_classes)
    codes = hook_codes(zsm, sae, images, k)
    on_all = per_class_accuracy(zsm, images, labels, n_classes, sae, None, k, codes=codes)
    curves: dict[tuple[str, str], torch.Tensor] = {}
    for sel in selections:
        for mode in modes:
            rows = []
            for kk in k_list:
                chosen = selection_masks(sel, counts, kk, alive, seed)
                masks = chosen if mode == "on" else ~chosen
                rows.append(per_class_accuracy(zsm, images, labels, n_classes, sae, masks, k,
                                               codes=codes))
                if progress is not None:
                    progress.update(1)
            curves[(sel, mode)] = torch.stack(rows)
    return MaskingCurve(zsm.name, k_list, original, on_all, curves)
