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
    for stop, name in ((0, pre), (-1, pre), (1, post)):
        torch.testing.assert_close(model(x, stop_at_layer=stop), cache[name])
