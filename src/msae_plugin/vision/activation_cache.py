"""On-disk cache of image activations: safetensors shards plus a JSON manifest.

Layout of ``cached_activations_path``::

    manifest.json                 what the activations are (model, hook, tokens...) + shard list
    shard_00000.safetensors       {"activations": [n_tokens, d_in]} for a run of whole images
    shard_00001.safetensors       ...

The cache is always a valid *prefix* of one image stream: shard ``i`` holds the tokens of
images ``[a_i, a_i + n_images_i)`` in stream order, ``tokens_per_image`` tokens each. Every shard
and every manifest update is written to a temporary file and moved into place with ``os.replace``,
so a run killed mid-write leaves the previous, consistent cache. Reading from image ``n`` on
yields exactly the tokens a fresh computation from image ``n`` on would (same order).

A cache is refused (:class:`ActivationCacheError`) if it was made for a different model,
pretrained weights, hook, token selection, image size, width, dtype or dataset.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from msae_plugin.atomic_io import atomic_write, is_temporary

MANIFEST_FILENAME = "manifest.json"
FORMAT = "msae-vision-activations"
FORMAT_VERSION = 1
#: manifest fields that must match for a cache to be reused
KEY_FIELDS = (
    "model_name",
    "pretrained",
    "hook_name",
    "token_selection",
    "image_size",
    "n_ctx",
    "tokens_per_image",
    "d_in",
    "dtype",
    "dataset_path",
)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


class ActivationCacheError(ValueError):
    """A cache folder that does not hold what this run needs, or is damaged."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def cache_key(
    *,
    model_name: str,
    pretrained: str | None,
    hook_name: str,
    token_selection: str,
    image_size: Any,
    n_ctx: int,
    tokens_per_image: int,
    d_in: int,
    dtype: str,
    dataset_path: str,
) -> dict[str, Any]:
    """The identifying fields of a cache, JSON-normalised (tuples become lists)."""
    if dtype not in _DTYPES:
        raise ActivationCacheError(f"unsupported cache dtype {dtype!r}; use one of {list(_DTYPES)}")
    return {
        "model_name": model_name,
        "pretrained": pretrained,
        "hook_name": hook_name,
        "token_selection": str(token_selection),
        "image_size": _jsonable(image_size),
        "n_ctx": int(n_ctx),
        "tokens_per_image": int(tokens_per_image),
        "d_in": int(d_in),
        "dtype": dtype,
        "dataset_path": str(dataset_path),
    }


class ActivationCache:
    """A shard folder for one (model, hook, token selection, ...) key. Use :meth:`open`."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, key: dict[str, Any], create: bool = True) -> ActivationCache:
        """Open the cache at ``path`` for ``key`` (see :func:`cache_key`).

        A missing folder (or an empty one) becomes a new, empty cache when ``create``; an
        existing cache must match ``key`` field by field.
        """
        path = Path(path)
        manifest_path = path / MANIFEST_FILENAME
        if not manifest_path.is_file():
            if path.is_dir() and any(not is_temporary(p) for p in path.iterdir()):
                raise ActivationCacheError(
                    f"{path} exists but is not an activation cache (no {MANIFEST_FILENAME}); "
                    "point cached_activations_path at an empty or new folder"
                )
            if not create:
                raise ActivationCacheError(f"no activation cache at {path}")
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                **key,
                "n_images": 0,
                "n_tokens": 0,
                "shards": [],
            }
            return cls(path, manifest)
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ActivationCacheError(
                f"{manifest_path} is not valid JSON ({exc}); delete {path} to rebuild the cache"
            ) from exc
        if manifest.get("format") != FORMAT:
            raise ActivationCacheError(f"{manifest_path} is not an msae activation-cache manifest")
        if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
            raise ActivationCacheError(
                f"the cache at {path} has format version {manifest['format_version']}, newer "
                f"than this msae-plugin reads ({FORMAT_VERSION}); upgrade msae-plugin"
            )
        diffs = [
            f"{f}: cache has {manifest.get(f)!r}, this run uses {key[f]!r}"
            for f in KEY_FIELDS
            if f in key and manifest.get(f) != key[f]
        ]
        if diffs:
            raise ActivationCacheError(
                f"the activation cache at {path} was made for different activations ("
                + "; ".join(diffs)
                + "). Point cached_activations_path at another folder, or delete this one to "
                "rebuild it."
            )
        for shard in manifest["shards"]:
            if not (path / shard["file"]).is_file():
                raise ActivationCacheError(
                    f"the activation cache at {path} is damaged: shard {shard['file']} listed in "
                    f"{MANIFEST_FILENAME} is missing. Delete {path} to rebuild it."
                )
        return cls(path, manifest)

    # ------------------------------------------------------------------ facts
    @property
    def n_images(self) -> int:
        return int(self.manifest["n_images"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def tokens_per_image(self) -> int:
        return int(self.manifest["tokens_per_image"])

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.manifest["dtype"]]

    # ------------------------------------------------------------------ reading
    def iter_shards(self, start_image: int = 0) -> Iterator[tuple[torch.Tensor, int]]:
        """``(tokens [n, d_in], n_images)`` from image ``start_image`` of the stream on."""
        first = 0
        tpi = self.tokens_per_image
        for shard in self.manifest["shards"]:
            n_img = int(shard["n_images"])
            if first + n_img <= start_image:
                first += n_img
                continue
            skip = max(0, start_image - first)
            tokens = load_file(str(self.path / shard["file"]))["activations"]
            if tokens.shape != (n_img * tpi, self.manifest["d_in"]):
                raise ActivationCacheError(
                    f"shard {shard['file']} in {self.path} has shape {tuple(tokens.shape)}, "
                    f"expected ({n_img * tpi}, {self.manifest['d_in']}); delete {self.path} to "
                    "rebuild the cache"
                )
            yield tokens[skip * tpi :], n_img - skip
            first += n_img

    def read_all(self) -> torch.Tensor:
        """Every cached token, in stream order, as one ``[n_tokens, d_in]`` tensor."""
        parts = [t for t, _ in self.iter_shards()]
        if not parts:
            return torch.empty(0, int(self.manifest["d_in"]), dtype=self.dtype)
        return torch.cat(parts)

    # ------------------------------------------------------------------ writing
    def append(self, tokens: torch.Tensor, n_images: int) -> Path:
        """Write the tokens of the next ``n_images`` images of the stream as a new shard."""
        tpi = self.tokens_per_image
        if tokens.dim() != 2 or tokens.shape != (n_images * tpi, self.manifest["d_in"]):
            raise ActivationCacheError(
                f"cannot cache tokens of shape {tuple(tokens.shape)} for {n_images} images of "
                f"{tpi} tokens and width {self.manifest['d_in']}"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        name = f"shard_{len(self.manifest['shards']):05d}.safetensors"
        data = {"activations": tokens.detach().to("cpu", self.dtype).contiguous()}
        atomic_write(self.path / name, lambda p: save_file(data, str(p)))
        manifest = dict(self.manifest)
        manifest["shards"] = [
            *self.manifest["shards"],
            {"file": name, "n_images": int(n_images), "n_tokens": int(tokens.shape[0])},
        ]
        manifest["n_images"] = self.n_images + int(n_images)
        manifest["n_tokens"] = self.n_tokens + int(tokens.shape[0])
        self._write_manifest(manifest)
        self.manifest = manifest
        return self.path / name

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        def write(p: Path) -> None:
            p.write_text(json.dumps(manifest, indent=1))

        atomic_write(self.path / MANIFEST_FILENAME, write)
