"""Bad image input gets a clear error naming the fix; ``model.preprocess`` is that fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.model import CLIP
from PIL import Image

from msae_plugin.errors import ImageInputError, ModelInputError, TextInputError
from msae_plugin.vision.hooked_clip import HookedOpenCLIP


@pytest.fixture(scope="module")
def model() -> HookedOpenCLIP:
    torch.manual_seed(0)
    clip = CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=16, patch_size=4, width=32, layers=1, head_width=8),
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    ).eval()
    return HookedOpenCLIP(clip, model_name="tiny")


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8), "uint8.*model.preprocess"),
        (torch.rand(2, 1, 16, 16), "grey-scale.*model.preprocess"),
        (torch.rand(2, 4, 16, 16), "4-channel"),
        (torch.rand(2, 3, 32, 32), "32x32 but this model takes 16x16"),
        (torch.rand(3, 16, 16), "add a batch dimension"),
        (torch.rand(0, 3, 16, 16), "empty image batch"),
        (np.zeros((2, 16, 16, 3), dtype=np.uint8), "got ndarray"),
        (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
        (torch.ones(8, dtype=torch.long), r"integer text tokens must be \[batch, seq\]"),
    ],
)
def test_bad_images_are_refused(model: HookedOpenCLIP, bad, match: str) -> None:
    with pytest.raises(ImageInputError, match=match):
        model(bad)


def test_bad_tokens_are_refused(model: HookedOpenCLIP) -> None:
    with pytest.raises(TextInputError, match="exceeds the text tower's context length 8"):
        model(torch.ones(2, 9, dtype=torch.long))
    with pytest.raises(TextInputError, match="empty text batch"):
        model(torch.ones(0, 8, dtype=torch.long))


@pytest.mark.parametrize(
    "tokens,match",
    [
        (torch.full((2, 8), 64), r"token ids must lie in 0\.\.63 .*got 64\.\.64"),
        (torch.full((2, 8), -1), r"token ids must lie in 0\.\.63"),
        (torch.ones(2, 8, dtype=torch.uint8), "dtype torch.uint8; token ids must be int64"),
        (torch.ones(2, 8, dtype=torch.bool), "dtype torch.bool"),
        (torch.ones(2, 0, dtype=torch.long), "token sequences of length 0"),
    ],
)
def test_bad_token_ids_are_refused(model: HookedOpenCLIP, tokens, match: str) -> None:
    """These used to fail inside nn.Embedding / argmax with a raw IndexError or RuntimeError."""
    with pytest.raises(TextInputError, match=match):
        model(tokens)


def test_preprocess_converts_every_common_form(model: HookedOpenCLIP) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    forms = [
        Image.fromarray(rgb),
        rgb,
        grey,
        torch.from_numpy(grey),
        torch.rand(3, 16, 16),
        torch.rand(1, 16, 16),
    ]
    x = model.preprocess(forms)
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32
    model(x)  # accepted
    # a uint8 grey image equals its float/255 RGB version after preprocessing
    mean, std = model.image_mean_std
    ref = (torch.from_numpy(grey).float() / 255).expand(3, -1, -1)
    ref = (ref - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(x[2], ref, atol=1e-6)
    assert torch.allclose(x[2], x[3])
    with pytest.raises(ImageInputError, match="empty image list"):
        model.preprocess([])


@pytest.mark.parametrize("stop", [2, 10, -2, -10, 1.0, True])
@pytest.mark.parametrize("tower", ["image", "text"])
def test_stop_at_layer_out_of_range_is_refused(model: HookedOpenCLIP, tower: str, stop) -> None:
    """The towers have 1 block each: valid values are -1, 0, 1 (and None). Python slicing would
    clip anything else silently (10 ran every block, -10 none)."""
    x = torch.rand(2, 3, 16, 16) if tower == "image" else torch.ones(2, 8, dtype=torch.long)
    match = "stop_at_layer.*-1..1" if isinstance(stop, int) and not isinstance(stop, bool) else (
        "stop_at_layer must be an int"
    )
    with pytest.raises(ModelInputError, match=match):
        model(x, stop_at_layer=stop)
    name = "blocks.0.hook_resid_pre" if tower == "image" else "text.blocks.0.hook_resid_pre"
    with pytest.raises(ModelInputError, match=match):
        model.run_with_cache(x, names_filter=[name], stop_at_layer=stop)
    with pytest.raises(ModelInputError, match=match):
        model.run_with_cache(x, stop_at_layer=stop)


@pytest.mark.parametrize("tower", ["image", "text"])
def test_stop_at_layer_in_range_counts_blocks(model: HookedOpenCLIP, tower: str) -> None:
    """0 and -1 stop before the only block, 1 after it: compare with the cached residual stream."""
    x = torch.rand(2, 3, 16, 16) if tower == "image" else torch.ones(2, 8, dtype=torch.long)
    pre = "blocks.0.hook_resid_pre" if tower == "image" else "text.blocks.0.hook_resid_pre"
    post = pre.replace("resid_pre", "resid_post")
    _, cache = model.run_with_cache(x, names_filter=[pre, post])
    for stop, name in ((0, pre), (-1, pre), (1, post), (np.int64(1), post)):
        torch.testing.assert_close(model(x, stop_at_layer=stop), cache[name])


# ---------------------------------------------------------------------- preprocess shape rules
def _normalised(model: HookedOpenCLIP, rgb01: torch.Tensor) -> torch.Tensor:
    """Independent reference: [3, H, W] pixels in [0, 1] normalised with the model's mean/std."""
    mean, std = model.image_mean_std
    return (rgb01 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@pytest.mark.parametrize("as_numpy", [False, True])
def test_preprocess_reads_a_grey_batch(model: HookedOpenCLIP, as_numpy: bool) -> None:
    """[B, H, W] with B not in (1, 3, 4) is a batch of grey images (it used to fail with
    'got 2 channels', after check_images had advised preprocess)."""
    grey = np.random.default_rng(1).integers(0, 256, (2, 16, 16), dtype=np.uint8)
    x = model.preprocess(grey if as_numpy else torch.from_numpy(grey))
    assert x.shape == (2, 3, 16, 16)
    for i in range(2):
        ref = torch.from_numpy(grey[i]).float().div(255).expand(3, -1, -1)
        torch.testing.assert_close(x[i], _normalised(model, ref))
    model(x)


@pytest.mark.parametrize("as_numpy", [False, True])
def test_preprocess_reads_channels_last(model: HookedOpenCLIP, as_numpy: bool) -> None:
    """[B, H, W, 3] and [H, W, 3] (tensor or array) are channels-last RGB (the batch used to be
    read as 16 channels)."""
    rgb = np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    wrap = (lambda a: a) if as_numpy else torch.from_numpy
    batch = model.preprocess(wrap(rgb))
    single = model.preprocess(wrap(rgb[1]))
    assert batch.shape == (2, 3, 16, 16) and single.shape == (1, 3, 16, 16)
    for i in range(2):
        ref = torch.from_numpy(rgb[i].transpose(2, 0, 1).copy()).float() / 255
        torch.testing.assert_close(batch[i], _normalised(model, ref))
    torch.testing.assert_close(single[0], batch[1])


def test_preprocess_three_by_h_by_w_is_one_rgb_image(model: HookedOpenCLIP) -> None:
    """The documented reading of [3, H, W]: one RGB image (torchvision's), not three grey ones;
    three grey images are written [3, 1, H, W]."""
    t = torch.rand(3, 16, 16)
    one = model.preprocess(t)
    assert one.shape == (1, 3, 16, 16)
    torch.testing.assert_close(one[0], _normalised(model, t))
    three = model.preprocess(t[:, None])
    assert three.shape == (3, 3, 16, 16)
    torch.testing.assert_close(three[2], _normalised(model, t[2].expand(3, -1, -1)))


def test_preprocess_resizes_each_image_like_pil(model: HookedOpenCLIP) -> None:
    """Images of different sizes in a list are each resized to 16x16; the reference is PIL's
    bilinear resize of each image separately (within PIL's uint8 rounding)."""
    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((24, 20, 3), (8, 12, 3))]
    x = model.preprocess(arrays)
    _, std = model.image_mean_std
    for i, a in enumerate(arrays):
        small = np.asarray(Image.fromarray(a).resize((16, 16), Image.BILINEAR)).copy()
        ref = _normalised(model, torch.from_numpy(small).permute(2, 0, 1).float() / 255)
        assert ((x[i] - ref).abs() * torch.tensor(std).view(3, 1, 1)).max() <= 1.01 / 255


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.rand(2, 5, 16, 16), r"channel axis of the image batch.*accepted: a PIL"),
        (torch.rand(1, 2, 3, 16, 16), r"cannot read images of shape \(1, 2, 3, 16, 16\)"),
        (torch.rand(16), r"cannot read images of shape \(16,\)"),
        ([torch.rand(2, 16, 16)], r"image 0 of the list has shape \(2, 16, 16\)"),
        (np.full((16, 16), 300, dtype=np.int32), r"must lie in 0\.\.255"),
        (torch.full((16, 16), -1, dtype=torch.int64), r"must lie in 0\.\.255"),
        (torch.full((3, 16, 16), float("inf")), "NaN or inf"),
        (torch.full((3, 8, 8), 3e38), "overflow float32 when normalised"),
        (np.array([["a", "b"], ["c", "d"]]), "cannot be read as pixels"),
        (torch.zeros(3, 16, 0), "has no pixels"),
        (torch.zeros(0, 3, 16, 16), "empty image list"),
        ("image.png", "cannot preprocess an image of type str"),
    ],
)
def test_preprocess_refuses_what_it_cannot_read(model: HookedOpenCLIP, bad, match: str) -> None:
    with pytest.raises(ImageInputError, match=match):
        model.preprocess(bad)


def test_channels_last_model_input_names_the_fix(model: HookedOpenCLIP) -> None:
    with pytest.raises(ImageInputError, match=r"channels-last.*permute\(0, 3, 1, 2\)"):
        model(torch.rand(2, 16, 16, 3))
