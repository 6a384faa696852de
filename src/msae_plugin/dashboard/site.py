"""Write the static, offline feature dashboard folder (see the schema in the dashboard docs).

The site must open from ``file://`` with no server and no network, so every data file is a
classic ``<script>`` that assigns into ``window.MSAE_DASH`` (browsers refuse ``fetch`` of local
files). Per-latent cards are split into page files by latent id, so the page loads only the few
pages its current view needs: a 16k-latent SAE stays fast. Floats are rounded to 4 significant
digits, which is all a plot or a table shows, and keeps the data a fraction of its raw size.

The folder is built in a hidden staging sibling and swapped in with
:func:`msae_plugin.atomic_io.atomic_directory`, so a killed build leaves the previous complete
dashboard (or none), never a half-written one.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from msae_plugin.atomic_io import atomic_directory

#: the front-end files copied verbatim into every site
STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = ("index.html", "dashboard.css", "dashboard.js")
#: widest sprite sheet row, in thumbnails (64 * 32 px = 2048 px: well within browser limits)
MAX_PER_ROW = 64
#: significant digits kept for every float written to the data files
SIGNIFICANT = 4
#: the per-latent columns meta["latents"] must hold, each of length d_sae
LATENT_COLUMNS = (
    "freq_image", "freq_token", "max", "mean_active", "name", "name_score", "name_valid",
    "level", "flag",
)


class DashboardSiteError(ValueError):
    """Inputs to :func:`write_site` that would produce a broken or misleading dashboard."""


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data with floats rounded to :data:`SIGNIFICANT` digits.

    NaN and infinities become ``null`` (JSON has no spelling for them); numpy and torch values
    become Python numbers and lists, so the collector may hand over arrays directly.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.{SIGNIFICANT}g}")
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return _plain(float(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return _plain(value.tolist())
    raise DashboardSiteError(
        f"cannot write a value of type {type(value).__name__} to the dashboard data; "
        "pass numbers, strings, lists, dicts, numpy arrays or torch tensors"
    )


def _dumps(value: Any) -> str:
    """Compact JSON (ASCII-escaped, so U+2028 and friends cannot break the script files)."""
    return json.dumps(_plain(value), separators=(",", ":"), allow_nan=False)


def _script(assignment: str, value: Any) -> str:
    """A classic script that creates ``window.MSAE_DASH`` if needed and assigns one value."""
    return (
        "window.MSAE_DASH = window.MSAE_DASH || {pages: {}};\n"
        f"window.MSAE_DASH.{assignment} = {_dumps(value)};\n"
    )


def _as_uint8_images(thumbs: Any) -> np.ndarray:
    """``thumbs`` as a C-contiguous uint8 numpy array [n, S, S, 3], or a clear error."""
    if hasattr(thumbs, "detach"):  # a torch tensor, possibly on a GPU
        thumbs = thumbs.detach().cpu().numpy()
    arr = np.asarray(thumbs)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise DashboardSiteError(
            f"thumbs has shape {tuple(arr.shape)}; expected [n, H, W, 3] (RGB, channels last). "
            "Convert CHW images with .permute(0, 2, 3, 1)"
        )
    if arr.dtype != np.uint8:
        raise DashboardSiteError(
            f"thumbs has dtype {arr.dtype}; expected uint8 in 0..255. "
            "Convert [0, 1] floats with (x * 255).round().clamp(0, 255).to(torch.uint8)"
        )
    if arr.shape[1] != arr.shape[2] or arr.shape[1] < 1:
        raise DashboardSiteError(
            f"thumbs are {arr.shape[1]}x{arr.shape[2]} pixels; the sprite sheet needs square "
            "thumbnails of at least 1 pixel: resize or centre-crop them first"
        )
    return np.ascontiguousarray(arr)


def _sprite(images: np.ndarray) -> tuple[np.ndarray, int]:
    """Tile ``images`` into one sheet, row-major; returns (sheet, thumbnails per row)."""
    n, size = images.shape[0], images.shape[1]
    per_row = max(1, min(n, MAX_PER_ROW))
    rows = max(1, math.ceil(n / per_row))
    sheet = np.full((rows * size, per_row * size, 3), 255, dtype=np.uint8)
    for i in range(n):
        y, x = (i // per_row) * size, (i % per_row) * size
        sheet[y:y + size, x:x + size] = images[i]
    return sheet, per_row


def _examples(card: dict) -> Iterable[dict]:
    """Every example (top images and interval examples) a card references."""
    yield from card.get("top") or []
    for interval in card.get("intervals") or []:
        yield from interval.get("examples") or []


def _check(meta: dict, cards: list[dict], n_thumbs: int, page_size: Any) -> int:
    """Validate the inputs against the schema; returns d_sae. Raises DashboardSiteError."""
    try:
        d_sae = int(meta["sae"]["d_sae"])
    except (KeyError, TypeError, ValueError) as err:
        raise DashboardSiteError(
            "meta['sae']['d_sae'] is missing or not an integer; the collector must record the "
            "SAE's width (cfg.d_sae) in meta['sae']"
        ) from err
    if isinstance(page_size, bool) or not isinstance(page_size, (int, np.integer)) \
            or page_size < 1:
        raise DashboardSiteError(
            f"page_size is {page_size!r}; it must be an integer >= 1 (latents per page file, "
            "e.g. 64)"
        )
    latents = meta.get("latents")
    if not isinstance(latents, dict):
        raise DashboardSiteError(
            "meta['latents'] is missing; it must hold the columns "
            f"{', '.join(LATENT_COLUMNS)}, each a list of length d_sae"
        )
    for column in LATENT_COLUMNS:
        values = latents.get(column)
        if values is None or len(values) != d_sae:
            got = "missing" if values is None else f"of length {len(values)}"
            raise DashboardSiteError(
                f"meta['latents'][{column!r}] is {got}; it must have one entry per latent "
                f"(d_sae = {d_sae})"
            )
    if len(cards) != d_sae:
        raise DashboardSiteError(
            f"got {len(cards)} cards for d_sae = {d_sae}; pass exactly one card per latent "
            "(dead latents too, with empty top/intervals)"
        )
    seen = np.zeros(d_sae, dtype=bool)
    for pos, card in enumerate(cards):
        cid = card.get("id") if isinstance(card, dict) else None
        if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)):
            raise DashboardSiteError(
                f"card at position {pos} has no integer 'id' ({cid!r}); every card must carry "
                "its latent id"
            )
        if not 0 <= cid < d_sae:
            raise DashboardSiteError(
                f"card id {cid} is outside 0..{d_sae - 1} (d_sae = {d_sae}); the cards do not "
                "belong to this SAE"
            )
        if seen[cid]:
            raise DashboardSiteError(
                f"latent {cid} has two cards; pass exactly one card per latent id"
            )
        seen[cid] = True
        for ex in _examples(card):
            img = ex.get("img")
            if isinstance(img, bool) or not isinstance(img, (int, np.integer)) \
                    or not 0 <= img < n_thumbs:
                raise DashboardSiteError(
                    f"card {cid} references image {img!r}, but thumbs holds {n_thumbs} images "
                    f"(valid indices 0..{n_thumbs - 1}); pass every image the cards reference"
                )
    return d_sae


def _looks_like_site(path: Path) -> bool:
    """Whether ``path`` is empty or a dashboard this module wrote (so it may be replaced)."""
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    return (path / "index.html").is_file() and (path / "data" / "meta.js").is_file()


def check_site_dir(out_dir: str | Path) -> Path:
    """Refuse an output folder that :func:`write_site` would have to delete (cheap: call it
    before hours of collection). A missing or empty folder, or an earlier dashboard, is fine."""
    out_dir = Path(out_dir)
    if not _looks_like_site(out_dir):
        what = "a file" if out_dir.exists() and not out_dir.is_dir() else (
            "a folder that is not a dashboard (no index.html and data/meta.js)")
        raise DashboardSiteError(
            f"{out_dir} is {what}; writing the site there would delete it. Pass a new or empty "
            "folder, or the folder of an earlier dashboard to replace it"
        )
    return out_dir


def write_site(out_dir: str | Path, meta: dict, cards: list[dict], thumbs: Any) -> Path:
    """Write the dashboard folder ``out_dir`` atomically and return its path.

    ``meta`` follows the schema minus the fields filled here (``thumb``, ``n_pages``;
    ``page_size`` defaults to 64 when absent); the caller's dict is not modified. ``cards`` holds
    one card per latent id; ``thumbs`` is a uint8 array or tensor [n, S, S, 3] of every image the
    cards reference (``ex["img"]`` indexes it). An existing dashboard at ``out_dir`` is replaced
    in one step; a folder that is not a dashboard is refused rather than deleted.
    """
    from PIL import Image  # matplotlib's dependency; imported here so the module loads without it

    out_dir = Path(out_dir)
    images = _as_uint8_images(thumbs)
    page_size = meta.get("page_size", 64)
    d_sae = _check(meta, cards, images.shape[0], page_size)
    page_size = int(page_size)
    check_site_dir(out_dir)
    missing = [name for name in STATIC_FILES if not (STATIC_DIR / name).is_file()]
    if missing:
        raise DashboardSiteError(
            f"the dashboard front-end files {missing} are missing from {STATIC_DIR}; "
            "reinstall msae-plugin (the package data was not installed)"
        )

    n_pages = max(1, math.ceil(d_sae / page_size))
    sheet, per_row = _sprite(images)
    full = dict(meta)
    full["page_size"] = page_size
    full["n_pages"] = n_pages
    full["thumb"] = {
        "file": "data/thumbs.png", "size": int(images.shape[1]), "per_row": per_row,
        "count": int(images.shape[0]),
    }
    by_id = sorted(cards, key=lambda c: int(c["id"]))

    with atomic_directory(out_dir) as tmp:
        for name in STATIC_FILES:
            shutil.copyfile(STATIC_DIR / name, tmp / name)
        data = tmp / "data"
        data.mkdir()
        (data / "meta.js").write_text(_script("meta", full), encoding="ascii")
        for page in range(n_pages):
            chunk = by_id[page * page_size:(page + 1) * page_size]
            (data / f"page-{page:04d}.js").write_text(
                _script(f"pages[{page}]", chunk), encoding="ascii"
            )
        Image.fromarray(sheet).save(data / "thumbs.png", optimize=True)
    return out_dir


def site_size(out_dir: str | Path) -> int:
    """Bytes on disk of every file in the site folder (to report and to keep sites small)."""
    return sum(f.stat().st_size for f in Path(out_dir).rglob("*") if f.is_file())
