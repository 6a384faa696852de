"""Image input checks and preprocessing for the hooked vision tower.

The tower expects what ``open_clip``'s transforms produce: float ``[batch, 3, H, W]`` tensors,
normalised by the model's mean/std, at the model's image size. Raw images (uint8, grey-scale,
PIL, numpy, wrong size) are a common silent failure (a uint8 image runs through a float conv
after an implicit cast and yields garbage), so :func:`check_images` refuses them with the fix,
and :func:`preprocess` converts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from msae_plugin.errors import ImageInputError

_FIX = "convert them with model.preprocess(images)"


def check_images(images: Any, image_size: tuple[int, int]) -> None:
    """Raise :class:`ImageInputError` unless ``images`` is ready for the vision tower."""
    if not isinstance(images, torch.Tensor):
        raise ImageInputError(
            f"images must be a float tensor [batch, 3, {image_size[0]}, {image_size[1]}], got "
            f"{type(images).__name__}; {_FIX} (accepts PIL images, numpy arrays, uint8 tensors)"
        )
    if images.dim() == 3:
        raise ImageInputError(
            f"images have shape {tuple(images.shape)} (3 dims): expected [batch, 3, H, W]. For one "
            "image add a batch dimension (images[None]); for grey-scale [batch, H, W] "
            f"{_FIX}"
        )
    if images.dim() != 4:
        raise ImageInputError(
            f"images must have shape [batch, 3, H, W], got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ImageInputError("empty image batch: pass at least one image")
    if not images.is_floating_point():
        raise ImageInputError(
            f"images have dtype {images.dtype}: raw {images.dtype} pixels must be scaled to [0, 1] "
            f"and normalised with the model's mean/std first; {_FIX}"
        )
    channels = images.shape[1]
    if channels != 3:
        what = "grey-scale" if channels == 1 else f"{channels}-channel"
        raise ImageInputError(
            f"images are {what} (shape {tuple(images.shape)}); the vision tower takes 3 RGB "
            f"channels; {_FIX}"
        )
    if tuple(images.shape[-2:]) != tuple(image_size):
        raise ImageInputError(
            f"images are {images.shape[-2]}x{images.shape[-1]} but this model takes "
            f"{image_size[0]}x{image_size[1]} (its positional embedding has one slot per patch); "
            f"resize them, or {_FIX}"
        )
    if not torch.isfinite(images).all():
        raise ImageInputError("images contain NaN or inf values; check the data pipeline")


def _to_tensor(img: Any) -> torch.Tensor:
    """One image (PIL, numpy HW/HWC, tensor HW/CHW/HWC) as a float CHW tensor in [0, 1]."""
    if hasattr(img, "convert") and hasattr(img, "size"):  # PIL image
        img = np.asarray(img.convert("RGB"))
    if isinstance(img, np.ndarray):
        t = torch.from_numpy(np.array(img, copy=True))
        if t.dim() == 3 and t.shape[-1] in (1, 3, 4):  # HWC
            t = t.permute(2, 0, 1)
    elif isinstance(img, torch.Tensor):
        t = img
    else:
        raise ImageInputError(f"cannot preprocess an image of type {type(img).__name__}")
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ImageInputError(f"an image must be 2-D or 3-D, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.float() / (255.0 if t.max() > 1 else 1.0)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] == 4:
        t = t[:3]
    elif t.shape[0] != 3:
        raise ImageInputError(f"an image must have 1, 3 or 4 channels, got {t.shape[0]}")
    return t.float()


def preprocess(
    images: Any,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Images in any common form -> normalised float ``[batch, 3, H, W]`` at ``image_size``.

    Grey-scale is repeated to RGB, alpha is dropped, integer pixels are scaled from [0, 255],
    and each image is resized (bilinear, antialiased) to the model's size.
    """
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        batch = list(images)
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        batch = list(images)
    elif isinstance(images, (list, tuple)):
        batch = list(images)
    else:
        batch = [images]
    if not batch:
        raise ImageInputError("empty image list: pass at least one image")
    out = []
    for img in batch:
        t = _to_tensor(img)
        if tuple(t.shape[-2:]) != tuple(image_size):
            t = F.interpolate(
                t[None], size=tuple(image_size), mode="bilinear", align_corners=False,
                antialias=True,
            )[0]
        out.append(t)
    x = torch.stack(out)
    m = torch.tensor(list(mean), dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s
