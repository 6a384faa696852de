"""Image activations for SAE training: SAELens's ``DataProvider`` for hooked CLIP image towers.

:class:`ImageActivationProvider` is an iterator of ``(train_batch_size_tokens, d_in)`` tensors,
which is all SAELens's ``SAETrainer`` needs. Per batch of ``store_batch_size_images`` images it

1. runs ``model.run_with_cache(images, names_filter=[hook], stop_at_layer=block + 1)``, so the
   blocks after the hook are never computed (the ``ActivationsStore`` idiom of SAELens and
   ViT-Prisma);
2. flattens attention heads (``hook_q/k/v/z`` are ``[B, L, H, d_head]`` -> ``H * d_head``, as
   SAELens does for ``hook_z`` SAEs);
3. keeps the token positions of the :class:`TokenSelection` and flattens to tokens;
4. refuses NaN/inf activations;

and feeds the tokens through SAELens's ``mixing_buffer`` (a buffer of ``n_batches_in_buffer``
training batches, half kept back and reshuffled with new tokens each time it fills).

With an :class:`~msae_plugin.vision.activation_cache.ActivationCache`, cached tokens are read
first and newly computed ones are appended to it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from sae_lens.training.mixing_buffer import mixing_buffer

from msae_plugin.errors import NonFiniteActivationsError, UnknownHookError
from msae_plugin.vision.activation_cache import ActivationCache
from msae_plugin.vision.config_files import VisionConfigError
from msae_plugin.vision.hook_names import block_of, check_names, tower_of
from msae_plugin.vision.image_sources import (
    ImageSource,
    ImageSourceExhaustedError,
    open_image_source,
)
from msae_plugin.vision.token_selection import TokenSelection, TokenSelectionError

PROVIDER_STATE_FILENAME = "vision_provider_state.json"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


def to_torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise VisionConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _check_count(name: str, value: Any, minimum: int) -> None:
    """Raise :class:`VisionConfigError` unless ``value`` is an int >= ``minimum``: ``int()``
    would truncate 2.5 silently and fail on strings with a bare ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise VisionConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def stop_at_layer_for(hook_name: str) -> int | None:
    """Blocks to run to reach ``hook_name``: ``block + 1``; 0 for the embeddings; ``None`` (the
    whole tower) for hooks after the last block."""
    layer = block_of(hook_name)
    if layer is not None:
        return layer + 1
    if hook_name in ("hook_embed", "hook_pos_embed"):
        return 0
    return None


def check_image_hook(model: Any, hook_name: str) -> int:
    """Raise unless ``hook_name`` is an image-tower hook an SAE can train on; return its width."""
    check_names([hook_name], model.hook_dict)  # UnknownHookError with the nearest name
    if tower_of(hook_name) != "image":
        raise UnknownHookError(
            f"{hook_name!r} is a text-tower hook; image SAE training needs an image-tower hook "
            f"such as {hook_name.removeprefix('text.')!r}"
        )
    width = model.activation_width(hook_name)
    if width is None:
        raise UnknownHookError(
            f"cannot train an SAE on {hook_name!r}: attention scores/patterns are per key "
            "position, not a feature vector. Use blocks.{i}.attn.hook_z or hook_attn_out."
        )
    return int(width)


class ImageActivationProvider:
    """An iterator of shuffled ``(train_batch_size_tokens, d_in)`` activation batches.

    Args:
        model: a ``HookedOpenCLIP`` (anything with its ``cfg``, ``hook_dict``, ``run_with_cache``,
            ``activation_width`` and ``preprocess``).
        hook_name: an image-tower hook, e.g. ``"blocks.3.hook_resid_post"``.
        images_source: dataset name, folder, :class:`ImageSource` or iterable of images.
        token_selection: ``"all"``, ``"cls"``, ``"patches"``, an int or ``"a:b"``.
        store_batch_size_images: images per model forward.
        train_batch_size_tokens: tokens per yielded batch.
        n_batches_in_buffer: size of the mixing buffer, in training batches.
        device, dtype: where / as what the yielded tokens live (default: the model's).
        seed: seed of a named dataset or folder order (ignored by in-memory images).
        mix_fraction: fraction of the buffer kept back for mixing (SAELens's default 0.5).
        cache: an :class:`ActivationCache` to read from first and append to.
        start_image: position in the image stream to start from (used when resuming).
        shard_size_tokens: tokens per cache shard (approximately; shards hold whole images).
    """

    def __init__(
        self,
        model: Any,
        hook_name: str,
        images_source: Any,
        token_selection: TokenSelection | str | int = "all",
        store_batch_size_images: int = 32,
        train_batch_size_tokens: int = 4096,
        n_batches_in_buffer: int = 8,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        seed: int = 0,
        mix_fraction: float = 0.5,
        cache: ActivationCache | None = None,
        start_image: int = 0,
        shard_size_tokens: int = 1 << 16,
        dataset_kwargs: dict[str, Any] | None = None,
    ) -> None:
        for name, value in (
            ("store_batch_size_images", store_batch_size_images),
            ("train_batch_size_tokens", train_batch_size_tokens),
            ("n_batches_in_buffer", n_batches_in_buffer),
            ("shard_size_tokens", shard_size_tokens),
        ):
            _check_count(name, value, minimum=1)
        _check_count("start_image", start_image, minimum=0)
        if not isinstance(mix_fraction, (int, float)) or not 0 <= mix_fraction <= 1:
            raise VisionConfigError(
                f"mix_fraction must be a number in [0, 1] (the part of the mixing buffer kept "
                f"back; SAELens's default is 0.5), got {mix_fraction!r}"
            )
        self.model = model
        self.hook_name = hook_name
        self.width = check_image_hook(model, hook_name)
        self.token_selection = TokenSelection.parse(token_selection)
        self.source: ImageSource = open_image_source(
            images_source, seed=seed, **(dataset_kwargs or {})
        )
        self.store_batch_size_images = int(store_batch_size_images)
        self.train_batch_size_tokens = int(train_batch_size_tokens)
        self.n_batches_in_buffer = int(n_batches_in_buffer)
        self.device = torch.device(device) if device is not None else model.device
        self.dtype = to_torch_dtype(dtype) or model.dtype
        self.mix_fraction = mix_fraction
        self.stop_at_layer = stop_at_layer_for(hook_name)
        self.cache = cache
        self.shard_size_tokens = int(shard_size_tokens)
        self.images_consumed = int(start_image)
        self._pending: list[torch.Tensor] = []
        self._pending_images = 0
        self._writing = False
        self._iter: Iterator[torch.Tensor] | None = None

        self.layout, self.positions = self._token_layout()
        self.tokens_per_image = len(self.positions)
        self.d_in = self.width
        if cache is not None and cache.tokens_per_image != self.tokens_per_image:
            raise ValueError(
                f"the activation cache holds {cache.tokens_per_image} tokens per image but this "
                f"provider keeps {self.tokens_per_image}"
            )

    # ------------------------------------------------------------------ layout
    def _raw(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            _, cache = self.model.run_with_cache(
                images,
                names_filter=[self.hook_name],
                stop_at_layer=self.stop_at_layer,
                return_type=None,
            )
        return cache[self.hook_name]

    def _token_layout(self) -> tuple[str, list[int]]:
        """Probe the hook's shape with one blank image: ``tokens`` ([B, n_ctx, ...]),
        ``patches`` ([B, n_patches, ...], e.g. ``hook_embed``) or ``pooled`` ([B, d])."""
        cfg = self.model.cfg
        n_ctx, n_prefix = int(cfg.n_ctx), int(cfg.n_prefix_tokens)
        probe = torch.zeros(1, 3, *cfg.image_size, device=self.model.device, dtype=self.model.dtype)
        acts = self._raw(probe)
        sel = self.token_selection
        if acts.dim() == 2:
            if sel.kind != "all":
                raise TokenSelectionError(
                    f"{self.hook_name!r} holds one pooled vector per image (shape "
                    f"{tuple(acts.shape)}), so there are no tokens to select; use "
                    f"token_selection='all' (got {str(sel)!r})"
                )
            return "pooled", [0]
        length = int(acts.shape[1])
        if length == n_ctx:
            return "tokens", sel.positions(n_ctx, n_prefix)
        if length == n_ctx - n_prefix:
            if sel.kind not in ("all", "patches"):
                raise TokenSelectionError(
                    f"{self.hook_name!r} holds only the {length} patch tokens (no CLS position); "
                    f"use token_selection='patches' or 'all' (got {str(sel)!r}), or train on "
                    "blocks.0.hook_resid_pre to include the CLS token"
                )
            return "patches", list(range(length))
        raise TokenSelectionError(  # pragma: no cover - no such hook in HookedOpenCLIP
            f"{self.hook_name!r} has shape {tuple(acts.shape)}; expected [batch, {n_ctx}, ...]"
        )

    # ------------------------------------------------------------------ activations
    def activations(self, images: torch.Tensor) -> torch.Tensor:
        """``[B * tokens_per_image, d_in]`` activations of a model-ready image batch (in image
        order, then token order)."""
        acts = self._raw(images)
        if acts.dim() > 3:
            acts = acts.flatten(2)  # [B, L, H, d_head] -> [B, L, H * d_head]
        if self.layout == "tokens":
            acts = self.token_selection.apply(acts, int(self.model.cfg.n_prefix_tokens))
        tokens = acts.reshape(-1, acts.shape[-1])
        if tokens.shape[-1] != self.d_in:  # pragma: no cover - activation_width disagrees
            raise RuntimeError(
                f"{self.hook_name!r} gave width {tokens.shape[-1]}, model.activation_width says "
                f"{self.d_in}"
            )
        if not torch.isfinite(tokens).all():
            n_nan = int(torch.isnan(tokens).sum())
            n_inf = int(torch.isinf(tokens).sum())
            raise NonFiniteActivationsError(
                f"activations at {self.hook_name!r} for images "
                f"{self.images_consumed}..{self.images_consumed + images.shape[0] - 1} of the "
                f"stream contain {n_nan} NaN and {n_inf} inf values. Check the images (NaN "
                "pixels?) and the model dtype (fp16 overflow? try dtype='float32')."
            )
        return tokens.to(device=self.device, dtype=self.dtype)

    def token_batches(self) -> Iterator[torch.Tensor]:
        """Unshuffled ``[n_images * tokens_per_image, d_in]`` blocks, from ``images_consumed`` on:
        first from the cache (if any), then computed (and appended to the cache)."""
        if self.cache is not None:
            # re-chunked to store_batch_size_images images, the size computed blocks have, so
            # the mixing buffer (and hence training) sees the same sequence either way
            tpi = self.tokens_per_image
            block = self.store_batch_size_images * tpi
            held: list[torch.Tensor] = []
            n_held = 0
            for tokens, _ in self.cache.iter_shards(self.images_consumed):
                held.append(tokens)
                n_held += tokens.shape[0]
                while n_held >= block:
                    buf = torch.cat(held)
                    out, rest = buf[:block], buf[block:]
                    held, n_held = [rest], rest.shape[0]
                    self.images_consumed += self.store_batch_size_images
                    yield out.to(device=self.device, dtype=self.dtype)
            if n_held:
                self.images_consumed += n_held // tpi
                yield torch.cat(held).to(device=self.device, dtype=self.dtype)
            self._writing = self.cache.n_images == self.images_consumed
            if not self._writing:
                warnings.warn(
                    f"the activation cache at {self.cache.path} ends at image "
                    f"{self.cache.n_images} but this run resumes at image {self.images_consumed}; "
                    "new activations are not cached",
                    stacklevel=2,
                )
        for images in self.source.batches(
            self.store_batch_size_images, self.model, start_image=self.images_consumed
        ):
            tokens = self.activations(images)
            self.images_consumed += images.shape[0]
            if self._writing:
                self._pending.append(tokens)
                self._pending_images += images.shape[0]
                if self._pending_images * self.tokens_per_image >= self.shard_size_tokens:
                    self.flush_cache()
            yield tokens

    def flush_cache(self) -> None:
        """Write computed-but-uncached tokens to the cache as a shard."""
        if self.cache is None or not self._pending:
            return
        self.cache.append(torch.cat(self._pending), self._pending_images)
        self._pending, self._pending_images = [], 0

    # ------------------------------------------------------------------ iterator protocol
    def __iter__(self) -> ImageActivationProvider:
        return self

    def __next__(self) -> torch.Tensor:
        if self._iter is None:
            self._iter = mixing_buffer(
                buffer_size=self.n_batches_in_buffer * self.train_batch_size_tokens,
                batch_size=self.train_batch_size_tokens,
                activations_loader=self.token_batches(),
                mix_fraction=self.mix_fraction,
            )
        try:
            return next(self._iter)
        except StopIteration:
            self.flush_cache()
            raise ImageSourceExhaustedError(
                f"{self.source.description} ran out after {self.images_consumed} images; a "
                "one-shot iterator is read only once. Pass a list (repeats in epochs), a "
                "dataset name or a folder, or train on fewer tokens."
            ) from None

    # ------------------------------------------------------------------ evaluation samples
    def eval_activations(self, n_images: int) -> tuple[torch.Tensor, bool]:
        """``(tokens, held_out)``: activations of ``n_images`` images from the source's held-out
        split when it has one (``held_out=True``), else from the start of the training stream."""
        batches = self.source.heldout_batches(n_images, self.store_batch_size_images, self.model)
        held_out = batches is not None
        if batches is None:
            if not self.source.repeatable:
                raise ImageSourceExhaustedError(
                    "a one-shot image iterator cannot also provide evaluation images"
                )
            batches = self.source.batches(self.store_batch_size_images, self.model)
        out, n = [], 0
        for images in batches:
            images = images[: n_images - n]
            out.append(self.activations(images))
            n += images.shape[0]
            if n >= n_images:
                break
        return torch.cat(out), held_out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "images_consumed": self.images_consumed,
            "hook_name": self.hook_name,
            "token_selection": str(self.token_selection),
            "tokens_per_image": self.tokens_per_image,
        }

    def save_to_checkpoint(self, checkpoint_path: str | Path) -> None:
        """Flush the cache and record where in the image stream this provider is."""
        self.flush_cache()
        path = Path(checkpoint_path)
        path.mkdir(parents=True, exist_ok=True)
        (path / PROVIDER_STATE_FILENAME).write_text(json.dumps(self.state_dict()))

    def load_from_checkpoint(self, checkpoint_path: str | Path) -> None:
        """Continue from the image after the last one read before the checkpoint (tokens that
        were still in the mixing buffer then are not replayed)."""
        state_path = Path(checkpoint_path) / PROVIDER_STATE_FILENAME
        if not state_path.is_file():
            raise FileNotFoundError(
                f"{state_path} is missing: {checkpoint_path} was not written by a vision training "
                "run (or is incomplete)"
            )
        state = json.loads(state_path.read_text())
        for key in ("hook_name", "token_selection", "tokens_per_image"):
            if state[key] != self.state_dict()[key]:
                raise ValueError(
                    f"checkpoint {checkpoint_path} was trained with {key}={state[key]!r}, this run "
                    f"uses {self.state_dict()[key]!r}"
                )
        if self._iter is not None:
            raise RuntimeError("load_from_checkpoint must be called before the first batch")
        self.images_consumed = int(state["images_consumed"])
