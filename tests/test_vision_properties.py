"""Property-based tests: image preprocessing and the image activation provider, fed random
shapes, dtypes, values and settings, either work (right shape, finite values) or raise one of the
documented errors, never a raw torch / numpy exception.

The expected batch size is computed from the shape rule as docs/vision-hooks.md states it,
written out here independently of ``images.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from open_clip.model import CLIP

from msae_plugin.errors import (
    ImageInputError,
    ModelInputError,
    NonFiniteActivationsError,
    UnknownHookError,
)
from msae_plugin.vision.activations import ImageActivationProvider
from msae_plugin.vision.config_files import VisionConfigError
from msae_plugin.vision.hooked_clip import HookedOpenCLIP
from msae_plugin.vision.image_sources import ImageSourceError
from msae_plugin.vision.token_selection import TokenSelectionError

SIZE = 16
PROPS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
PROVIDER_PROPS = settings(PROPS, max_examples=25)  # each example runs the model
CH = (1, 3, 4)


def _tiny() -> HookedOpenCLIP:
    torch.manual_seed(0)
    clip = CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=SIZE, patch_size=4, width=32, layers=2, head_width=8),
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    ).eval()
    return HookedOpenCLIP(clip, model_name="tiny")


MODEL = _tiny()


# ---------------------------------------------------------------------- preprocessing
def expected_count(shape: tuple[int, ...], is_numpy: bool) -> int | None:
    """Images in one array by the documented rule; ``None`` where it must be refused."""
    if 0 in shape:
        return None
    if len(shape) == 2:
        return 1
    if len(shape) == 3:
        return 1 if (shape[0] in CH or shape[-1] in CH) else shape[0]
    if len(shape) == 4:
        return shape[0] if (shape[1] in CH or shape[-1] in CH) else None
    return None


NP_DTYPES = st.sampled_from(
    [np.uint8, np.int16, np.int32, np.int64, np.uint16, np.bool_, np.float16, np.float32,
     np.float64]
)
DIM = st.sampled_from([0, 1, 2, 3, 4, 5, 7, 16])


@st.composite
def pixel_arrays(draw) -> np.ndarray:
    shape = tuple(draw(st.lists(DIM, min_size=1, max_size=5)))
    assume(math.prod(shape) <= 4096)
    dtype = np.dtype(draw(NP_DTYPES))
    if dtype.kind == "f":
        elements = st.floats(
            width=8 * dtype.itemsize if dtype.itemsize <= 8 else 64,
            allow_nan=True, allow_infinity=True,
        ) | st.floats(0, 1, width=8 * dtype.itemsize)
    elif dtype.kind == "b":
        elements = st.booleans()
    else:
        info = np.iinfo(dtype)
        elements = st.integers(max(info.min, -300), min(info.max, 300)) | st.integers(0, 255)
    return draw(hnp.arrays(dtype, shape, elements=elements))


def _in_unit_box(x: torch.Tensor) -> bool:
    """Normalised [0, 1] pixels lie in [(0 - mean) / std, (1 - mean) / std] per channel."""
    mean, std = MODEL.image_mean_std
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return bool(((x >= -m / s - 1e-4) & (x <= (1 - m) / s + 1e-4)).all())


def _valid_pixels(a: np.ndarray) -> bool:
    """Pixels the documented rules accept: 8-bit integers, booleans, and floats that stay
    finite in float32 once normalised with the model's mean/std."""
    if a.dtype.kind == "f":
        mean, std = MODEL.image_mean_std
        with np.errstate(over="ignore", invalid="ignore"):
            f = a.astype(np.float32)
            if not np.isfinite(f).all():
                return False
            if f.size == 0:
                return True
            lo, hi = f.min(), f.max()
            return all(
                np.isfinite((np.float32(v) - np.float32(m)) / np.float32(s))
                for v in (lo, hi) for m, s in zip(mean, std, strict=True)
            )
    if a.dtype.kind in "iu":
        return bool(a.size == 0 or (a.min() >= 0 and a.max() <= 255))
    return True


@PROPS
@given(a=pixel_arrays(), as_tensor=st.booleans())
@example(a=np.full((3, 8, 8), 3e38, dtype=np.float32), as_tensor=True)  # overflowed to inf
def test_preprocess_works_or_raises_image_input_error(a: np.ndarray, as_tensor: bool) -> None:
    if as_tensor and a.dtype == np.uint16:
        a = a.astype(np.int32)  # torch has no general uint16 tensors
    data = torch.from_numpy(a.copy()) if as_tensor else a
    count = expected_count(a.shape, not as_tensor)
    try:
        x = MODEL.preprocess(data)
    except ImageInputError:
        assert count is None or not _valid_pixels(a), f"refused a readable {a.shape} {a.dtype}"
        return
    assert count is not None and _valid_pixels(a), f"accepted {a.shape} {a.dtype}"
    assert x.shape == (count, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    if a.dtype.kind != "f" or (np.nan_to_num(a.astype(np.float64)).clip(0, 1) == a).all():
        assert _in_unit_box(x)  # pixels in [0, 1] stay in range through the resize


@PROPS
@given(
    images=st.lists(pixel_arrays(), min_size=0, max_size=3),
    as_tensor=st.booleans(),
)
def test_preprocess_of_a_list(images: list[np.ndarray], as_tensor: bool) -> None:
    items = [torch.from_numpy(a.astype(np.int32) if a.dtype == np.uint16 else a.copy())
             if as_tensor else a for a in images]
    single = [
        len(a.shape) == 2 or (len(a.shape) == 3 and (a.shape[0] in CH or a.shape[-1] in CH))
        for a in images
    ]
    ok = bool(images) and all(single) and all(0 not in a.shape for a in images) and all(
        _valid_pixels(a) for a in images
    )
    try:
        x = MODEL.preprocess(items)
    except ImageInputError:
        assert not ok
        return
    assert ok and x.shape == (len(images), 3, SIZE, SIZE) and torch.isfinite(x).all()


# ---------------------------------------------------------------------- activation provider
IMAGE_HOOKS = [h for h in MODEL.hook_dict if not h.startswith("text.")]
TEXT_HOOKS = [h for h in MODEL.hook_dict if h.startswith("text.")]
N_CTX = int(MODEL.cfg.n_ctx)

selections = st.one_of(
    st.sampled_from(["all", "cls", "patches", "ALL ", "first", "", "1:2:3:4", "a:b", "::0"]),
    st.integers(-25, 25),
    st.tuples(
        st.none() | st.integers(-25, 25), st.none() | st.integers(-25, 25),
        st.none() | st.integers(-2, 3),
    ).map(lambda t: ":".join("" if v is None else str(v) for v in t)),
)
image_lists = st.lists(
    st.sampled_from(["rgb_u8", "grey_u8", "float_model", "chw_small", "hwc_big"]),
    min_size=1, max_size=3,
)


def _image(kind: str, i: int):
    g = np.random.default_rng(i)
    return {
        "rgb_u8": lambda: g.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
        "grey_u8": lambda: g.integers(0, 256, (9, 11), dtype=np.uint8),
        "float_model": lambda: torch.rand(3, SIZE, SIZE),
        "chw_small": lambda: torch.rand(3, 5, 7),
        "hwc_big": lambda: torch.from_numpy(g.random((20, 18, 3)).astype(np.float32)),
    }[kind]()


def _expected_tokens(hook: str, selection) -> int | None:
    """Tokens per image by the documented rules, ``None`` where the selection must fail."""
    if hook.endswith(("hook_image_embed",)) or (
        hook == "hook_ln_post" and MODEL.clip.visual.final_ln_after_pool
    ):
        return 1 if str(selection).strip().lower() == "all" else None
    n = N_CTX - 1 if hook == "hook_embed" else N_CTX
    spec = str(selection).strip().lower()
    if spec in ("all",):
        return n
    if hook == "hook_embed":
        return n if spec == "patches" else None
    if spec == "cls":
        return 1
    if spec == "patches":
        return n - 1
    try:
        i = int(spec)
        return 1 if -n <= i < n else None
    except ValueError:
        pass
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        return None
    try:
        nums = [int(p) if p else None for p in parts] + [None] * (3 - len(parts))
    except ValueError:
        return None
    start, stop, step = nums
    if step is not None and step < 1:
        return None
    start = 0 if start is None else (start + n if start < 0 else start)
    stop = n if stop is None else (stop + n if stop < 0 else stop)
    if not (0 <= start <= n and 0 <= stop <= n):
        return None
    kept = len(range(start, stop, step or 1))
    return kept or None


@PROVIDER_PROPS
@given(
    hook=st.sampled_from(IMAGE_HOOKS + TEXT_HOOKS[:3] + ["blocks.0.hook_resid_psot", "nope"]),
    selection=selections,
    images=image_lists,
    store=st.integers(-1, 4),
    train=st.integers(-1, 24),
    n_buffer=st.integers(0, 3),
)
def test_provider_works_or_raises_documented_errors(
    hook: str, selection, images: list[str], store: int, train: int, n_buffer: int
) -> None:
    items = [_image(kind, i) for i, kind in enumerate(images)]
    bad_sizes = min(store, train, n_buffer) < 1
    try:
        provider = ImageActivationProvider(
            MODEL, hook, items, token_selection=selection, store_batch_size_images=store,
            train_batch_size_tokens=train, n_batches_in_buffer=n_buffer,
        )
        batch = next(provider)
    except VisionConfigError:
        assert bad_sizes
        return
    except UnknownHookError:
        assert hook not in IMAGE_HOOKS or MODEL.activation_width(hook) is None
        return
    except TokenSelectionError:
        assert _expected_tokens(hook, selection) is None
        return
    except (ImageInputError, ImageSourceError, ModelInputError) as exc:  # pragma: no cover
        pytest.fail(f"valid images refused: {exc}")
    assert not bad_sizes and hook in IMAGE_HOOKS
    assert _expected_tokens(hook, selection) == provider.tokens_per_image
    assert batch.shape == (train, MODEL.activation_width(hook))
    assert torch.isfinite(batch).all()


@PROVIDER_PROPS
@given(a=pixel_arrays())
def test_provider_images_work_or_raise_image_input_error(a: np.ndarray) -> None:
    """Random arrays as the provider's images: accepted as the preprocess rule says, else a
    documented error (from preprocess, or the image source for an empty list)."""
    try:
        provider = ImageActivationProvider(
            MODEL, "blocks.0.hook_resid_post", [a], store_batch_size_images=2,
            train_batch_size_tokens=8, n_batches_in_buffer=1,
        )
        batch = next(provider)
    except (ImageInputError, ImageSourceError):
        return
    except NonFiniteActivationsError:  # huge (finite) float pixels overflow inside the model
        assert a.dtype.kind == "f" and np.abs(a).max() > 1e6
        return
    assert batch.shape == (8, 32) and torch.isfinite(batch).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(store_batch_size_images=0), "store_batch_size_images must be an integer >= 1"),
        (dict(train_batch_size_tokens=2.5), r"train_batch_size_tokens .* got 2\.5"),
        (dict(n_batches_in_buffer="4"), "n_batches_in_buffer must be an integer"),
        (dict(start_image=-1), "start_image must be an integer >= 0"),
        (dict(mix_fraction=1.5), r"mix_fraction must be a number in \[0, 1\]"),
        (dict(dtype="float8"), "unknown dtype 'float8'"),
    ],
)
def test_provider_settings_are_checked(kwargs: dict, match: str) -> None:
    """Bad provider settings raise VisionConfigError naming the setting (they used to raise a
    bare ValueError, truncate 2.5 to 2, or fail later inside SAELens's mixing buffer)."""
    images = [torch.rand(3, SIZE, SIZE)]
    with pytest.raises(VisionConfigError, match=match):
        ImageActivationProvider(MODEL, "blocks.0.hook_resid_post", images, **kwargs)
