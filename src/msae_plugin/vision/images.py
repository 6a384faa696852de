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
        tokens = "" if images.is_floating_point() else (
            "; integer text tokens must be [batch, seq] (model.to_tokens(...))"
        )
        raise ImageInputError(
            f"images must have shape [batch, 3, H, W], got {tuple(images.shape)}{tokens}"
        )
    if images.shape[0] == 0:
        raise ImageInputError("empty image batch: pass at least one image")
    if not images.is_floating_point():
        raise ImageInputError(
            f"images have dtype {images.dtype}: raw {images.dtype} pixels must be scaled to [0, 1] "
            f"and normalised with the model's mean/std first; {_FIX}"
        )
    channels = images.shape[1]
    if channels != 3 and images.shape[-1] in (1, 3, 4):
        raise ImageInputError(
            f"images of shape {tuple(images.shape)} look channels-last [batch, H, W, C]; the "
            f"vision tower takes [batch, 3, H, W]: {_FIX} (or images.permute(0, 3, 1, 2))"
        )
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


_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: 2 is never a channel count (it is a batch of 2)
ACCEPTED = (
    "accepted: a PIL image; a tensor or numpy array [H, W] (one grey image), [C, H, W] or "
    "[H, W, C] with C = 1, 3 or 4 (one image), [B, H, W] (a batch of grey images), "
    "[B, C, H, W] or [B, H, W, C]; or a list/tuple of single images"
)


def _channel_axis(shape: Sequence[int], numpy_layout: bool) -> int | None:
    """The channel axis of one image's 3-D shape: 0 (CHW), 2 (HWC) or None (no channel axis).

    An axis is a channel axis when its size is 1, 3 or 4. When both ends qualify (an image 1, 3
    or 4 pixels high/wide) the container's convention decides, as in torchvision: numpy arrays
    (and PIL) are channels-last, torch tensors channels-first."""
    first, last = shape[0] in _CHANNELS, shape[-1] in _CHANNELS
    if first and last:
        return 2 if numpy_layout else 0
    if first:
        return 0
    if last:
        return 2
    return None


def _as_tensor(img: Any) -> tuple[torch.Tensor, bool]:
    """``(tensor, numpy_layout)`` for a PIL image, numpy array or tensor (pixels not yet scaled).

    Integer numpy arrays are range-checked and cast to uint8 here, because torch supports few
    operations on numpy's other unsigned types."""
    if hasattr(img, "convert") and hasattr(img, "size"):  # PIL image
        img = np.asarray(img.convert("RGB"))
    if isinstance(img, torch.Tensor):
        return img.detach(), False
    if not isinstance(img, np.ndarray):
        raise ImageInputError(f"cannot preprocess an image of type {type(img).__name__}; {ACCEPTED}")
    kind = img.dtype.kind
    if kind == "b":
        img = img.astype(np.float32)
    elif kind in "iu":
        if img.size and (img.min() < 0 or img.max() > 255):
            raise ImageInputError(_INT_RANGE.format(dtype=img.dtype))
        img = img.astype(np.uint8)
    elif kind != "f":
        raise ImageInputError(
            f"images of numpy dtype {img.dtype} cannot be read as pixels; pass uint8 values in "
            "0..255 or floats in [0, 1]"
        )
    return torch.from_numpy(np.array(img, copy=True)), True


_INT_RANGE = (
    "integer pixels ({dtype}) must lie in 0..255 (8-bit); convert other ranges (e.g. 16-bit "
    "images) to floats in [0, 1] first"
)


def _to_float(t: torch.Tensor) -> torch.Tensor:
    """Pixels as float32 in [0, 1]: integers (any width) are 8-bit values, divided by 255."""
    if t.dtype == torch.bool:
        return t.float()
    if t.is_complex():
        raise ImageInputError(f"images of dtype {t.dtype} are not pixels; pass real values")
    if not t.is_floating_point():
        t = t.to(torch.int64)
        if t.numel() and (t.min() < 0 or t.max() > 255):
            raise ImageInputError(_INT_RANGE.format(dtype=t.dtype))
        return t.float() / 255.0
    t = t.float()
    if not torch.isfinite(t).all():
        raise ImageInputError(
            "images contain NaN or inf values (or values too large for float32); check the data "
            "pipeline"
        )
    return t


def _to_chw(t: torch.Tensor, axis: int | None) -> torch.Tensor:
    """One 2-D or 3-D image (channel axis ``axis``) as a float ``[3, H, W]`` tensor in [0, 1]."""
    if t.dim() == 2:
        t = t.unsqueeze(0)
    elif axis == 2:
        t = t.permute(2, 0, 1)
    if t.shape[-2] == 0 or t.shape[-1] == 0:
        raise ImageInputError(f"an image has no pixels (shape {tuple(t.shape)})")
    t = _to_float(t)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t[:3]  # drops alpha


def _images(images: Any) -> list[tuple[torch.Tensor, int | None]]:
    """Split the input into single images ``(2-D or 3-D tensor, channel axis)`` by the rules of
    :func:`preprocess`."""
    if isinstance(images, (list, tuple)):
        out = []
        for i, img in enumerate(images):
            t, numpy_layout = _as_tensor(img)
            axis = _channel_axis(t.shape, numpy_layout) if t.dim() == 3 else None
            if t.dim() not in (2, 3) or (t.dim() == 3 and axis is None):
                raise ImageInputError(
                    f"image {i} of the list has shape {tuple(t.shape)}: a list holds single "
                    f"images [H, W], [C, H, W] or [H, W, C] with C = 1, 3 or 4 (pass a batch as "
                    f"one array, not inside a list); {ACCEPTED}"
                )
            out.append((t, axis))
        return out
    t, numpy_layout = _as_tensor(images)
    if t.dim() == 2:
        return [(t, None)]
    if t.dim() == 3:
        axis = _channel_axis(t.shape, numpy_layout)
        if axis is not None:  # one image (so [3, H, W] is one RGB image, as in torchvision)
            return [(t, axis)]
        return [(g, None) for g in t]  # [B, H, W]: a batch of grey images
    if t.dim() == 4:
        axis = _channel_axis(t.shape[1:], numpy_layout)
        if axis is None:
            raise ImageInputError(
                f"cannot find the channel axis of the image batch of shape {tuple(t.shape)}: "
                f"axis 1 or the last axis must have size 1, 3 or 4; {ACCEPTED}"
            )
        return [(img, axis) for img in t]
    raise ImageInputError(f"cannot read images of shape {tuple(t.shape)}; {ACCEPTED}")


def preprocess(
    images: Any,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Images in any common form -> normalised float ``[batch, 3, H, W]`` at ``image_size``.

    How shapes are read (tensors and numpy arrays alike):

    * 2-D ``[H, W]``: one grey image.
    * 3-D: one image if its first or last axis has size 1, 3 or 4 (the channel axis:
      ``[C, H, W]`` or ``[H, W, C]``), otherwise a batch of grey images ``[B, H, W]``. So
      ``[3, H, W]`` is one RGB image (as in torchvision), and ``[2, H, W]`` two grey images; to
      pass a batch of three grey images write ``[3, 1, H, W]`` or a list.
    * 4-D: a batch, ``[B, C, H, W]`` or ``[B, H, W, C]`` (C = 1, 3 or 4).
    * a list or tuple: one image per element (PIL, 2-D or 3-D), of any sizes.

    When both ends of a 3-D image could be the channel axis (an image at most 4 pixels high or
    wide), numpy arrays are read channels-last and tensors channels-first (torchvision's
    convention). Grey-scale is repeated to RGB, alpha is dropped, integer pixels are 8-bit
    values scaled from 0..255 (other ranges are refused), floats are taken as [0, 1], and each
    image is resized (bilinear, antialiased) to the model's size. Anything else raises
    :class:`ImageInputError` listing the accepted forms.
    """
    batch = _images(images)
    if not batch:
        raise ImageInputError("empty image list (or batch): pass at least one image")
    out = []
    for t, axis in batch:
        t = _to_chw(t, axis)
        if tuple(t.shape[-2:]) != tuple(image_size):
            t = F.interpolate(
                t[None], size=tuple(image_size), mode="bilinear", align_corners=False,
                antialias=True,
            )[0]
        out.append(t)
    x = torch.stack(out)
    m = torch.tensor(list(mean), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    if not torch.isfinite(x).all():  # finite pixels near float32's limit overflow here
        raise ImageInputError(
            "pixel values overflow float32 when normalised: float pixels are read as values in "
            "[0, 1] (uint8 ones as 0..255); rescale the images first"
        )
    return x
