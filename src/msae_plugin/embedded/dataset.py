"""Deterministic image + caption scenes for the embedded CLIP model ("msae-tiny-clip").

Every scene is a real handwritten digit from scikit-learn's ``load_digits`` (1797 greyscale 8x8
images) rendered onto a 32x32 RGB canvas:

* the digit is upsampled (bilinear) to a 24 px glyph, drawn ``thin``, ``regular`` or ``bold``;
* rotated ``upright`` (0 deg), ``tilted left`` (+25 deg, counter-clockwise: the top leans left)
  or ``tilted right`` (-25 deg), each with +-5 deg jitter, scaled to 21-24 px and placed at a
  small random offset (up to about 1 px);
* coloured in one of six named colours;
* composited over a ``dark`` background (near black) or a ``textured`` one (a dimmed greyscale
  crop of a scikit-image sample texture: brick, grass, gravel or the camera man).

Hierarchical concepts are functions of the digit class:

* parity: even (0 2 4 6 8) / odd (1 3 5 7 9);
* loop: a closed loop in the usual handwritten form: 0, 6, 8, 9. The 4 counts as *without* a
  loop, because most fours in ``load_digits`` are written open-topped;
* stroke: straight strokes (1, 4, 7) / curved strokes (all others).

The source digits are split by index: the first 80 % (1438 digits) are the ``train`` split, the
last 20 % (359 digits) the ``test`` split. ``load_digits`` is ordered by writer batches, so the
test split is held-out handwriting. All randomness comes from ``numpy.random.default_rng`` seeded
with ``(seed, split)``, so the same arguments always give the same tensors and captions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
GLYPH_SIZE = 24
TRAIN_FRACTION = 0.8
# Scene and caption parameters the shipped model was trained with (change them and retrain).
# The glyph (24 px canvas incl. the digit's blank margin) is scaled to SCALE_RANGE px and shifted
# by up to SHIFT_FRACTION of the free space: small offsets keep a 4 px-patch ViT trainable in
# minutes on a CPU (full-range translation slowed zero-shot learning several-fold).
SHIFT_FRACTION = 0.15
SCALE_RANGE = (21.0, 24.0)
# Probabilities of the optional caption parts. "minimal" (a caption naming only the digit) is off
# in the shipped grammar: sparser captions trained slower in our runs. Every caption names its
# digit, so the hierarchy words are redundant for the text tower (see MODEL_CARD.md).
CAPTION_P: dict[str, float] = {
    "minimal": 0.0,
    "colour": 0.8,
    "thickness": 0.7,
    "hierarchy": 0.6,
    "parity": 0.7,
    "rotation": 0.6,
    "background": 0.5,
}

CLASS_NAMES: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip

ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of the digit {}",
    "the number {}",
    "the handwritten digit {}",
    "the digit {} on a dark background",
)

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.15, 0.1),
    "green": (0.15, 0.85, 0.2),
    "blue": (0.2, 0.35, 1.0),
    "yellow": (1.0, 0.9, 0.1),
    "white": (1.0, 1.0, 1.0),
    "purple": (0.7, 0.25, 1.0),
}
ROTATIONS: tuple[str, ...] = ("upright", "tilted left", "tilted right")
ROTATION_DEGREES: tuple[float, ...] = (0.0, 25.0, -25.0)
THICKNESSES: tuple[str, ...] = ("thin", "regular", "bold")
BACKGROUNDS: tuple[str, ...] = ("dark", "textured")
PARITIES: tuple[str, ...] = ("even", "odd")
LOOPS: tuple[str, ...] = ("without a loop", "with a loop")
STROKES: tuple[str, ...] = ("curved", "straight")

LOOP_DIGITS = frozenset({0, 6, 8, 9})
STRAIGHT_DIGITS = frozenset({1, 4, 7})

ATTRIBUTE_NAMES: dict[str, list[str]] = {
    "colour": list(COLOURS),
    "rotation": list(ROTATIONS),
    "thickness": list(THICKNESSES),
    "background": list(BACKGROUNDS),
    "parity": list(PARITIES),
    "loop": list(LOOPS),
    "stroke": list(STROKES),
}

# Per-channel statistics of 20000 train-split scenes (seed 0), computed once with
# ``compute_image_stats()`` and hard-coded so that normalisation never depends on sampling.
IMAGE_MEAN: tuple[float, float, float] = (0.1923, 0.1780, 0.1756)
IMAGE_STD: tuple[float, float, float] = (0.2296, 0.2045, 0.2214)

_TEXTURES = ("brick", "grass", "gravel", "camera")
_SPLIT_IDS = {"train": 0, "test": 1}


@dataclass
class DigitScenes:
    """A batch of rendered scenes. ``images`` are RGB in [0, 1], not normalised."""

    images: torch.Tensor  # float32 [n, 3, IMAGE_SIZE, IMAGE_SIZE]
    labels: torch.Tensor  # long [n], digit 0-9
    captions: list[str]
    attributes: dict[str, torch.Tensor]  # name -> long [n] codes into attribute_names[name]
    attribute_names: dict[str, list[str]]
    source_index: torch.Tensor  # long [n], index into sklearn's load_digits

    def __len__(self) -> int:
        return len(self.captions)


def digit_parity(d: int) -> int:
    """0 = even, 1 = odd."""
    return int(d) % 2


def digit_loop(d: int) -> int:
    """1 if the digit has a closed loop (0, 6, 8, 9), else 0."""
    return int(int(d) in LOOP_DIGITS)


def digit_stroke(d: int) -> int:
    """1 = straight strokes (1, 4, 7), 0 = curved strokes."""
    return int(int(d) in STRAIGHT_DIGITS)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0)  # [1797, 8, 8] in [0, 1]
    labels = torch.from_numpy(d.target.astype(np.int64))
    return images, labels


def split_indices(split: str) -> torch.Tensor:
    """Indices into ``load_digits`` of the source digits of a split (fixed, contiguous 80/20)."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    n = _digits()[0].shape[0]
    cut = int(round(n * TRAIN_FRACTION))
    return torch.arange(0, cut) if split == "train" else torch.arange(cut, n)


@functools.lru_cache(maxsize=1)
def _texture_bank() -> torch.Tensor:
    """Greyscale texture crops [n_crops, IMAGE_SIZE, IMAGE_SIZE] in [0, 1]."""
    import skimage.data

    crops = []
    for name in _TEXTURES:
        img = torch.from_numpy(np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0)
        img = F.avg_pool2d(img[None, None], 4)[0, 0]  # 512 -> 128: a coarser, still real texture
        patches = img.unfold(0, IMAGE_SIZE, 8).unfold(1, IMAGE_SIZE, 8)  # stride 8
        crops.append(patches.reshape(-1, IMAGE_SIZE, IMAGE_SIZE))
    return torch.cat(crops).contiguous()


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _caption(
    rng: np.random.Generator,
    digit: int,
    colour: str,
    rotation: str,
    thickness: str,
    background: str,
) -> str:
    name = CLASS_NAMES[digit]
    p = CAPTION_P
    minimal = rng.random() < p["minimal"]
    show_colour = not minimal and rng.random() < p["colour"]
    show_thick = not minimal and thickness != "regular" and rng.random() < p["thickness"]
    form = rng.integers(4)
    if form == 0:  # "a bold red seven"
        words = ([thickness] if show_thick else []) + ([colour] if show_colour else []) + [name]
        noun = f"{_article(words[0])} {' '.join(words)}"
    elif form == 1:  # "the digit seven in red"
        hand = "handwritten " if rng.random() < 0.3 else ""
        noun = f"the {hand}digit {name}"
        if show_colour:
            noun += f" in {colour}"
        if show_thick:
            noun = f"{noun} drawn {thickness}"
    elif form == 2:  # "the number seven"
        noun = f"the number {name}"
        if show_colour:
            noun += f" in {colour}"
    else:  # "a thin handwritten seven"
        words = ([thickness] if show_thick else []) + ([colour] if show_colour else [])
        words += ["handwritten", name]
        noun = f"{_article(words[0])} {' '.join(words)}"
    prefix = ("", "", "a photo of ", "a picture of ", "an image of ")[rng.integers(5)]
    parts = [prefix + noun]

    if minimal:
        return parts[0]
    if rng.random() < p["hierarchy"]:  # the hierarchy clause: "an odd digit without a loop"
        with_parity = rng.random() < p["parity"]
        adj = PARITIES[digit_parity(digit)] + " " if with_parity else ""
        clause = f"{_article(adj or 'digit')} {adj}digit"
        which = rng.integers(3 if with_parity else 2)  # never a bare "a digit"
        if which == 0:
            clause += " " + LOOPS[digit_loop(digit)]
        elif which == 1:
            clause += f" with {STROKES[digit_stroke(digit)]} strokes"
        parts.append(clause)
    if rng.random() < p["rotation"]:
        parts.append(rotation)
    if rng.random() < p["background"]:
        parts.append(f"on a {background} background")
    return ", ".join(parts)


def _render(
    glyphs: torch.Tensor,
    thickness: torch.Tensor,
    angle_deg: torch.Tensor,
    scale_px: torch.Tensor,
    shift: torch.Tensor,
    colours: torch.Tensor,
    background: torch.Tensor,
) -> torch.Tensor:
    """Vectorised rendering: glyphs [n, 8, 8] -> RGB [n, 3, S, S] in [0, 1]."""
    n = glyphs.shape[0]
    if n == 0:
        return background.clone()
    g = F.interpolate(glyphs[:, None], size=(GLYPH_SIZE, GLYPH_SIZE), mode="bilinear")
    g = g.clamp(0, 1)
    bold = F.max_pool2d(g, 3, stride=1, padding=1)
    thin = ((g - 0.45) * 2.5).clamp(0, 1)
    regular = (g * 1.3).clamp(0, 1)
    t = thickness.view(n, 1, 1, 1)
    g = torch.where(t == 0, thin, torch.where(t == 2, bold, regular))

    # Output normalised coords -> glyph normalised coords: x_in = A (x_out - shift).
    theta = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(theta), torch.sin(theta)
    k = (IMAGE_SIZE / scale_px).view(n, 1, 1)
    # y points down in image coordinates; this matrix turns the glyph counter-clockwise on screen
    # for a positive angle ("tilted left": the top of the digit leans left).
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    a = k * rot
    b = -(a @ shift.unsqueeze(-1))
    grid = F.affine_grid(torch.cat([a, b], -1), [n, 1, IMAGE_SIZE, IMAGE_SIZE], align_corners=False)
    alpha = F.grid_sample(g, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return background * (1 - alpha) + colours.view(n, 3, 1, 1) * alpha


def make_digit_scenes(n: int, split: str = "train", seed: int = 0) -> DigitScenes:
    """Render ``n`` scenes from the source digits of ``split``; deterministic in (n, split, seed).

    Generating 20000 scenes takes about two seconds on a 2-core CPU.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    src = split_indices(split)
    images8, labels8 = _digits()
    rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], 20240611])

    pick = src[torch.from_numpy(rng.integers(len(src), size=n))]
    labels = labels8[pick]
    colour = torch.from_numpy(rng.integers(len(COLOURS), size=n))
    rotation = torch.from_numpy(rng.integers(len(ROTATIONS), size=n))
    thickness = torch.from_numpy(rng.integers(len(THICKNESSES), size=n))
    background = torch.from_numpy(rng.integers(len(BACKGROUNDS), size=n))
    jitter = torch.from_numpy(rng.uniform(-5.0, 5.0, size=n).astype(np.float32))
    scale_px = torch.from_numpy(rng.uniform(*SCALE_RANGE, size=n).astype(np.float32))
    # Keep the glyph inside the canvas: a shift of up to (S - size)/2 px (the 8x8 digits have
    # a blank margin, so rotated glyphs stay visible too).
    max_shift = SHIFT_FRACTION * ((IMAGE_SIZE - scale_px) / 2) / (IMAGE_SIZE / 2)
    shift = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(n, 2)).astype(np.float32))
    shift = shift * max_shift[:, None]
    colour_jitter = torch.from_numpy(rng.uniform(-0.06, 0.06, size=(n, 3)).astype(np.float32))
    tex_pick = rng.integers(1 << 30, size=n)
    tex_dim = torch.from_numpy(rng.uniform(0.2, 0.45, size=n).astype(np.float32))
    dark_level = torch.from_numpy(rng.uniform(0.0, 0.08, size=n).astype(np.float32))
    captions = [
        _caption(
            rng,
            int(labels[i]),
            list(COLOURS)[int(colour[i])],
            ROTATIONS[int(rotation[i])],
            THICKNESSES[int(thickness[i])],
            BACKGROUNDS[int(background[i])],
        )
        for i in range(n)
    ]

    angle = torch.tensor(ROTATION_DEGREES)[rotation] + jitter
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
    colours = (palette[colour] + colour_jitter).clamp(0, 1)
    bank = _texture_bank()
    tex = bank[torch.from_numpy(tex_pick % bank.shape[0])] * tex_dim.view(n, 1, 1)
    dark = dark_level.view(n, 1, 1).expand(n, IMAGE_SIZE, IMAGE_SIZE)
    bg = torch.where(background.view(n, 1, 1) == 1, tex, dark)[:, None].expand(n, 3, -1, -1)
    images = _render(images8[pick], thickness, angle, scale_px, shift, colours, bg)

    lab = labels.tolist()
    attributes = {
        "colour": colour,
        "rotation": rotation,
        "thickness": thickness,
        "background": background,
        "parity": torch.tensor([digit_parity(d) for d in lab], dtype=torch.long),
        "loop": torch.tensor([digit_loop(d) for d in lab], dtype=torch.long),
        "stroke": torch.tensor([digit_stroke(d) for d in lab], dtype=torch.long),
    }
    return DigitScenes(
        images=images.float().contiguous(),
        labels=labels.long(),
        captions=captions,
        attributes={k: v.long() for k, v in attributes.items()},
        attribute_names={k: list(v) for k, v in ATTRIBUTE_NAMES.items()},
        source_index=pick.long(),
    )


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Per-channel normalisation with the hard-coded train-split ``IMAGE_MEAN`` / ``IMAGE_STD``."""
    mean = torch.tensor(IMAGE_MEAN, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std = torch.tensor(IMAGE_STD, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images - mean) / std


def compute_image_stats(n: int = 20000, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``n`` train-split scenes (how ``IMAGE_MEAN/STD`` were made)."""
    x = make_digit_scenes(n, "train", seed).images
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


def caption_vocabulary() -> list[str]:
    """Every word the caption grammar and the zero-shot templates can produce (sorted)."""
    words: set[str] = set(CLASS_NAMES) | set(COLOURS) | set(THICKNESSES) | set(BACKGROUNDS)
    for phrase in (*ROTATIONS, *PARITIES, *LOOPS, *STROKES, *ZERO_SHOT_TEMPLATES):
        words.update(phrase.replace("{}", " ").split())
    words.update(
        "a an the of in on digit number handwritten drawn photo picture image with strokes "
        "background".split()
    )
    return sorted(words)
