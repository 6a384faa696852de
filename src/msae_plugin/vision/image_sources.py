"""Where training images come from: a named dataset, a folder of image files, or any collection
of images in memory.

Every source yields model-ready batches (float ``[B, 3, H, W]``, normalised for the model) through
:meth:`ImageSource.batches`, can start from any image of its stream (``start_image``, used to
resume an interrupted run and to extend an activation cache), and repeats in epochs when it can.

* ``"msae-digits"`` — the embedded digit scenes (:mod:`msae_plugin.embedded.dataset`), train split,
  rendered fresh for every epoch from ``(seed, epoch)`` so a long run never repeats a scene and two
  runs with the same seed see the same scenes. Normalised with the model's own mean/std through
  ``model.preprocess`` (for ``msae-tiny-clip`` that is exactly ``embedded.dataset.normalize``).
  Held-out images for evaluation come from the test split.
* a folder — every image file under it (recursively; PIL), converted with ``model.preprocess``,
  in a seeded random order per epoch.
* an iterable — tensors (one image ``[3, H, W]`` or a batch ``[B, 3, H, W]``), PIL images or numpy
  arrays. Float tensors already at the model's image size are used as they are (they are assumed
  preprocessed, like any model input); anything else goes through ``model.preprocess``. A list,
  tuple or tensor repeats in epochs; a one-shot iterator (a generator) is read once.

Register more named datasets with :func:`register_image_dataset`.
"""

from __future__ import annotations

import hashlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from msae_plugin.names import suggest

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class ImageSourceError(ValueError):
    """An image source that cannot be used (unknown name, empty folder, no images, bad file)."""


class ImageSourceExhaustedError(RuntimeError):
    """A one-shot image iterable ran out before training had seen enough tokens."""


def _derived_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (independent of Python's hash randomisation)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def prepare_images(images: Any, model: Any, raw_pixels: bool = False) -> torch.Tensor:
    """A batch of images as the model's float input: ready tensors pass, the rest is
    converted with ``model.preprocess`` (always, with ``raw_pixels``: [0, 1] RGB that still needs
    the model's normalisation). Returned on the model's device and dtype."""
    if raw_pixels:
        return model.preprocess(images)
    size = tuple(model.cfg.image_size)
    if isinstance(images, torch.Tensor) and images.dim() == 3:
        images = images[None]
    if isinstance(images, (list, tuple)) and images and all(
        isinstance(t, torch.Tensor) and t.dim() == 3 for t in images
    ):
        shapes = {tuple(t.shape) for t in images}
        if len(shapes) == 1 and all(t.is_floating_point() for t in images):
            images = torch.stack(list(images))
    if (
        isinstance(images, torch.Tensor)
        and images.dim() == 4
        and images.is_floating_point()
        and images.shape[1] == 3
        and tuple(images.shape[-2:]) == size
    ):
        return images.to(device=model.device, dtype=model.dtype)
    return model.preprocess(images)


class ImageSource(ABC):
    """A stream of images in epochs. Subclasses implement :meth:`_epoch`."""

    #: images per epoch, if known
    epoch_size: int | None = None
    #: False for one-shot iterables: the stream ends after one pass
    repeatable: bool = True
    #: a short human-readable description (shown in errors and logs)
    description: str = "images"
    #: batches are un-normalised pixels: always run them through ``model.preprocess``
    raw_pixels: bool = False

    @abstractmethod
    def _epoch(self, epoch: int, start: int, batch_size: int) -> Iterator[Any]:
        """Raw batches of epoch ``epoch`` from its image ``start`` on (``prepare_images`` input)."""

    def batches(self, batch_size: int, model: Any, start_image: int = 0) -> Iterator[torch.Tensor]:
        """Model-ready batches of exactly ``batch_size`` images (across chunk and epoch
        boundaries; only a one-shot source's last batch can be smaller), from image
        ``start_image`` of the stream on; endless for repeatable sources."""
        if batch_size < 1:
            raise ImageSourceError(f"batch_size must be >= 1, got {batch_size}")
        carry: list[torch.Tensor] = []
        n_carry = 0
        for x in self._stream(batch_size, model, start_image):
            carry.append(x)
            n_carry += x.shape[0]
            while n_carry >= batch_size:
                joined = torch.cat(carry) if len(carry) > 1 else carry[0]
                yield joined[:batch_size]
                rest = joined[batch_size:]
                carry, n_carry = [rest], rest.shape[0]
        if n_carry:
            yield torch.cat(carry)

    def _stream(self, batch_size: int, model: Any, start_image: int) -> Iterator[torch.Tensor]:
        epoch, start = 0, start_image
        if self.repeatable and self.epoch_size:
            epoch, start = divmod(start_image, self.epoch_size)
        while True:
            seen = 0
            for raw in self._epoch(epoch, start, batch_size):
                x = prepare_images(raw, model, self.raw_pixels)
                seen += x.shape[0]
                yield x
            if seen == 0 and start == 0:
                raise ImageSourceError(f"{self.description} holds no images")
            if not self.repeatable:
                return
            epoch, start = epoch + 1, 0

    def heldout_batches(
        self, n_images: int, batch_size: int, model: Any
    ) -> Iterator[torch.Tensor] | None:
        """Batches of images that are never trained on, or ``None`` if the source has no
        held-out split (then evaluations use a sample of the training stream)."""
        return None


# ---------------------------------------------------------------------- the embedded digits
class DigitScenesSource(ImageSource):
    """The embedded digit scenes: fresh, deterministic scenes per epoch (train split)."""

    raw_pixels = True

    def __init__(
        self,
        seed: int = 0,
        images_per_epoch: int = 8192,
        chunk_size: int = 512,
        split: str = "train",
    ) -> None:
        from msae_plugin.embedded import dataset  # noqa: F401  (fail early if missing)

        if images_per_epoch < 1 or chunk_size < 1:
            raise ImageSourceError("images_per_epoch and chunk_size must be >= 1")
        self.seed = int(seed)
        self.epoch_size = int(images_per_epoch)
        self.chunk_size = int(chunk_size)
        self.split = split
        self.description = f"dataset 'msae-digits' ({split} split, seed {seed})"

    def _chunk(self, epoch: int, index: int, split: str | None = None) -> torch.Tensor:
        from msae_plugin.embedded.dataset import make_digit_scenes

        split = split or self.split
        n = min(self.chunk_size, self.epoch_size - index * self.chunk_size)
        seed = _derived_seed(self.seed, epoch, index, 0 if split == "train" else 1)
        return make_digit_scenes(n, split=split, seed=seed).images

    def _epoch(self, epoch: int, start: int, batch_size: int) -> Iterator[torch.Tensor]:
        first = start // self.chunk_size
        n_chunks = -(-self.epoch_size // self.chunk_size)
        offset = start - first * self.chunk_size
        for index in range(first, n_chunks):
            images = self._chunk(epoch, index)[offset:]
            offset = 0
            yield from images.split(batch_size)

    def heldout_batches(
        self, n_images: int, batch_size: int, model: Any
    ) -> Iterator[torch.Tensor]:
        from msae_plugin.embedded.dataset import make_digit_scenes

        images = make_digit_scenes(n_images, split="test", seed=_derived_seed(self.seed, -1)).images
        return (prepare_images(b, model, raw_pixels=True) for b in images.split(batch_size))


# ---------------------------------------------------------------------- a folder of files
class FolderImageSource(ImageSource):
    """Every image file under a folder (recursively), in a seeded random order per epoch."""

    def __init__(self, folder: str | Path, seed: int = 0, shuffle: bool = True) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ImageSourceError(f"{self.folder} is not a folder")
        self.files = sorted(
            p
            for p in self.folder.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not self.files:
            raise ImageSourceError(
                f"folder {self.folder} contains no image files (looked for "
                f"{', '.join(IMAGE_EXTENSIONS)}, recursively)"
            )
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch_size = len(self.files)
        self.description = f"folder {self.folder} ({len(self.files)} images)"

    def order(self, epoch: int) -> list[Path]:
        if not self.shuffle:
            return list(self.files)
        g = torch.Generator().manual_seed(_derived_seed(self.seed, epoch))
        return [self.files[i] for i in torch.randperm(len(self.files), generator=g).tolist()]

    def _epoch(self, epoch: int, start: int, batch_size: int) -> Iterator[list[Any]]:
        return self.epoch_strided(epoch, start, 1, batch_size)

    def epoch_strided(
        self, epoch: int, start: int, stride: int, batch_size: int
    ) -> Iterator[list[Any]]:
        """Raw batches of images ``start, start + stride, ...`` of epoch ``epoch``: a rank of a
        multi-process run decodes only its own share of the files
        (:class:`~msae_plugin.distributed.sharding.ShardedImageSource`)."""
        from PIL import Image

        files = self.order(epoch)[start::stride]
        for i in range(0, len(files), batch_size):
            batch = []
            for path in files[i : i + batch_size]:
                try:
                    with Image.open(path) as img:
                        batch.append(img.convert("RGB"))
                except Exception as exc:  # PIL raises several types for bad files
                    raise ImageSourceError(
                        f"cannot read image file {path}: {type(exc).__name__}: {exc}. Remove or "
                        "fix it."
                    ) from exc
            yield batch


# ---------------------------------------------------------------------- in-memory images
def _split_items(item: Any) -> list[Any]:
    if isinstance(item, torch.Tensor) and item.dim() == 4:
        return list(item)
    return [item]


class IterableImageSource(ImageSource):
    """Images from a list/tuple/tensor (repeats in epochs) or a one-shot iterator (read once)."""

    def __init__(self, images: Iterable[Any]) -> None:
        if isinstance(images, torch.Tensor):
            if images.dim() == 3:
                images = images[None]
            if images.dim() != 4:
                raise ImageSourceError(
                    f"an image tensor must be [3, H, W] or [B, 3, H, W], got {tuple(images.shape)}"
                )
            if images.shape[0] == 0:
                raise ImageSourceError("empty image tensor: pass at least one image")
            self.items: Any = [images]
            self.repeatable = True
            self.epoch_size = int(images.shape[0])
        elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
            self.items = list(images)
            self.repeatable = True
            self.epoch_size = sum(len(_split_items(x)) for x in self.items)
            if self.epoch_size == 0:
                raise ImageSourceError(
                    "empty image list: pass at least one image (a tensor [3, H, W] or "
                    "[B, 3, H, W], a PIL image or a numpy array)"
                )
        elif isinstance(images, Iterable):
            self.items = iter(images)
            self.repeatable = False
            self.epoch_size = None
        else:
            raise ImageSourceError(
                f"cannot use {type(images).__name__} as images: pass a dataset name, a folder, "
                "or an iterable of image tensors / PIL images"
            )
        kind = "list" if self.repeatable else "iterator"
        self.description = (
            f"{kind} of {self.epoch_size} images" if self.epoch_size else f"{kind} of images"
        )

    def _epoch(self, epoch: int, start: int, batch_size: int) -> Iterator[list[Any]]:
        batch: list[Any] = []
        position = 0
        for item in self.items:
            for img in _split_items(item):
                position += 1
                if position <= start:
                    continue
                batch.append(img)
                if len(batch) == batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch


# ---------------------------------------------------------------------- the registry
IMAGE_DATASETS: dict[str, Callable[..., ImageSource]] = {"msae-digits": DigitScenesSource}


def register_image_dataset(name: str, factory: Callable[..., ImageSource]) -> None:
    """Make ``dataset_path=name`` resolve to ``factory(seed=..., **dataset_kwargs)``."""
    existing = IMAGE_DATASETS.get(name)
    if existing is not None and existing is not factory:
        raise ImageSourceError(f"image dataset name {name!r} is already registered")
    IMAGE_DATASETS[name] = factory


def _call_factory(factory: Callable[..., ImageSource], what: str, *args: Any, **kwargs: Any):
    try:
        inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as exc:
        params = [p for p in inspect.signature(factory).parameters if p not in ("self", "folder")]
        raise ImageSourceError(
            f"{what} does not accept these dataset_kwargs ({exc}); it takes: {', '.join(params)}"
        ) from None
    return factory(*args, **kwargs)


def open_image_source(spec: Any, seed: int = 0, **kwargs: Any) -> ImageSource:
    """An :class:`ImageSource` for a dataset name, a folder path, an ``ImageSource`` or an
    iterable of images. ``kwargs`` go to a named dataset's factory (e.g. ``images_per_epoch``)."""
    if isinstance(spec, ImageSource):
        return spec
    if isinstance(spec, (str, Path)):
        name = str(spec)
        if name in IMAGE_DATASETS:
            return _call_factory(IMAGE_DATASETS[name], f"dataset {name!r}", seed=seed, **kwargs)
        path = Path(name).expanduser()
        if path.is_dir():
            return _call_factory(FolderImageSource, "a folder dataset", path, seed=seed, **kwargs)
        if path.exists():
            raise ImageSourceError(
                f"dataset_path {name!r} is a file; pass the folder that holds the images"
            )
        hint = suggest(name, sorted(IMAGE_DATASETS), cutoff=0.5)
        raise ImageSourceError(
            f"unknown image dataset {name!r} (and no such folder).{hint} Known datasets: "
            f"{', '.join(sorted(IMAGE_DATASETS))}; or pass a folder of image files."
        )
    return IterableImageSource(spec)
