"""The downstream task for adaptation: digit scenes in a shifted domain, base-to-novel split.

Domain: the embedded model's digit scenes (``make_digit_scenes``) rotated by 90 degrees
counter-clockwise (``torch.rot90``). The base model never saw a digit lying on its side; its
zero-shot accuracy falls from about 90 % to about 23 % (10 classes, see ``SHIFTS`` and
docs/adaptation.md for the other shifts measured), while the content stays learnable.

Protocol (CoOp / PatchSAE base-to-novel): the digits 0-4 are the *base* classes, the only ones
adaptation sees; 5-9 are *novel*. Accuracy is reported separately on base-class and on
novel-class test images, each as a 5-way choice among its own half (the protocol's numbers), and
as a 10-way choice over all classes. Images come from the ``train`` split's handwriting for
adaptation and from the ``test`` split's (held-out writers) for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from msae_plugin.embedded.dataset import CLASS_NAMES, make_digit_scenes, normalize

BASE_CLASSES: tuple[int, ...] = (0, 1, 2, 3, 4)
NOVEL_CLASSES: tuple[int, ...] = (5, 6, 7, 8, 9)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return x.mean(1, keepdim=True).expand_as(x).contiguous()


# Shifts of [n, 3, H, W] images in [0, 1]; base zero-shot accuracy (10-way, 2000 test scenes,
# seed 5) is measured in docs/adaptation.md. "rot90" is the task's domain.
SHIFTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "rot90": lambda x: torch.rot90(x, 1, (2, 3)).contiguous(),
    "rot180": lambda x: torch.rot90(x, 2, (2, 3)).contiguous(),
    "hflip": lambda x: x.flip(3),
    "invert": lambda x: 1.0 - x,
    "grey": _grey,
    "low_contrast": lambda x: 0.3 + 0.4 * x,
}
DEFAULT_SHIFT = "rot90"


@dataclass
class TaskData:
    """Model-ready images of the task. ``images``: normalised ``[n, 3, 32, 32]`` (what
    ``ZeroShotModel.logits`` takes); ``labels``: digit ids 0-9 (indices into ``CLASS_NAMES``);
    ``raw``: the shifted images in [0, 1] (for display)."""

    images: torch.Tensor
    labels: torch.Tensor
    raw: torch.Tensor
    shift: str
    split: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, classes: Sequence[int]) -> TaskData:
        """Only the images whose label is in ``classes``."""
        keep = torch.isin(self.labels, torch.tensor(list(classes)))
        return replace(self, images=self.images[keep], labels=self.labels[keep], raw=self.raw[keep])


def check_classes(classes: Sequence[int]) -> list[int]:
    """Validate a list of digit class ids."""
    out = list(classes)
    if not out or len(set(out)) != len(out) or not all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(CLASS_NAMES) for c in out
    ):
        raise ValueError(f"classes must be distinct digit ids in 0..9, got {classes!r}")
    return out


def make_task_data(n: int, split: str = "train", seed: int = 0, shift: str = DEFAULT_SHIFT,
                   classes: Sequence[int] | None = None) -> TaskData:
    """``n`` shifted scenes of ``split`` (deterministic in the arguments). With ``classes``, only
    scenes of those digits are kept (``n`` of them: more scenes are rendered and filtered)."""
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; choose one of {sorted(SHIFTS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    want = check_classes(classes) if classes is not None else None
    total = n if want is None else int(n * len(CLASS_NAMES) / len(want) * 1.3) + 50
    scenes = make_digit_scenes(total, split, seed)
    raw, labels = scenes.images, scenes.labels
    if want is not None:
        keep = torch.isin(labels, torch.tensor(want)).nonzero().flatten()[:n]
        raw, labels = raw[keep], labels[keep]
    raw = SHIFTS[shift](raw)
    return TaskData(normalize(raw), labels.clone(), raw, shift, split)


def class_subset_model(zsm, classes: Sequence[int]):  # noqa: ANN001, ANN201 (ZeroShotModel)
    """The same model scored against only ``classes`` (rows of its class embeddings)."""
    from msae_plugin.zero_shot_model import ZeroShotModel

    idx = check_classes(classes)
    return ZeroShotModel(zsm.model, zsm.class_embeddings[idx], [zsm.class_names[i] for i in idx],
                         zsm.logit_scale, f"{zsm.name}[{','.join(map(str, idx))}]", dict(zsm.info))


@torch.no_grad()
def evaluate(zsm, data: TaskData, base: Sequence[int] = BASE_CLASSES,  # noqa: ANN001
             novel: Sequence[int] = NOVEL_CLASSES, batch_size: int = 500) -> dict[str, float]:
    """Accuracy on ``data``: ``base`` / ``novel`` (5-way within each half, on that half's images,
    the base-to-novel protocol) and ``all`` (10-way over every class, all images). Each image is
    embedded once (``zsm.model(images)``) and scored with ``zsm.logits_from_embeddings``."""
    emb = torch.cat([zsm.model(data.images[i:i + batch_size]).float().cpu()
                     for i in range(0, len(data), batch_size)]) if len(data) else None
    out: dict[str, float] = {}
    for key, classes in (("base", base), ("novel", novel)):
        idx = check_classes(classes)
        keep = torch.isin(data.labels, torch.tensor(idx))
        if emb is None or not bool(keep.any()):
            out[key] = float("nan")
            continue
        local = torch.tensor([idx.index(int(y)) for y in data.labels[keep]], dtype=torch.long)
        pred = class_subset_model(zsm, idx).logits_from_embeddings(emb[keep]).argmax(-1)
        out[key] = float((pred == local).float().mean())
    out["all"] = (float((zsm.logits_from_embeddings(emb).argmax(-1) == data.labels).float().mean())
                  if emb is not None else float("nan"))
    return out
