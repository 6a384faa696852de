"""The dashboard site writer and its front end, rendered in a real headless Chromium.

The data are synthetic, built here to the schema (dead latents, dense ones, an MSAE with a
ladder and heat maps, an embedding-hook SAE with neither), so the tests pin the contract
between the Python writer and the page without training anything. Each browser call takes
about half a second; the page is driven through its URL hash.
"""

from __future__ import annotations

import base64
import html
import json
import re
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from browser import console_errors, render
from PIL import Image

from msae_plugin.dashboard import site as site_mod
from msae_plugin.dashboard.site import DashboardSiteError, check_site_dir, site_size, write_site

NAMES = ["red", "green", "blue", "stripes", "dots", "redwood", "bored", "sky", "", ""]
WORDS = ["red", "green", "blue", "stripe", "dot", "sky", "tree", "cat", "dog", "sun"]
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def synthetic(d_sae: int = 300, page_size: int = 64, *, embedding: bool = False,
              seed: int = 0) -> tuple[dict, list[dict], np.ndarray]:
    """(meta, cards, thumbs) per the schema: every 23rd latent dead, a few dense ones.

    ``embedding`` gives an embedding-hook, non-MSAE SAE: grid, heat, ladder and levels null.
    """
    rng = np.random.default_rng(seed)
    n_images, size = 48, 16
    yy, xx = np.mgrid[0:size, 0:size]
    thumbs = np.zeros((n_images, size, size, 3), dtype=np.uint8)
    for i in range(n_images):  # a coloured gradient with a bright square: visibly not blank
        base = rng.integers(40, 220, size=3)
        thumbs[i] = np.clip(base + (xx[..., None] * 6 - 40), 0, 255)
        cy, cx = rng.integers(2, size - 6, size=2)
        thumbs[i, cy:cy + 4, cx:cx + 4] = [250, 250, 250]
    grid = None if embedding else [4, 4]
    ladder = None if embedding else [4, 8, 16]
    dead = np.arange(d_sae) % 23 == 5
    freq = np.where(dead, 0.0, rng.uniform(0.001, 0.45, d_sae))
    for i, f in ((7, 0.62), (100, 0.71), (201, 0.93)):  # dense ones, in different pages
        if i < d_sae:
            freq[i] = f
    mx = np.where(dead, 0.0, rng.uniform(0.5, 5.0, d_sae))
    names = [NAMES[i % len(NAMES)] if not dead[i] else "" for i in range(d_sae)]
    latents = {
        "freq_image": freq,
        "freq_token": freq / 7,
        "max": mx,
        "mean_active": mx / 3,
        "name": names,
        "name_score": [None if embedding else float(rng.uniform(0.1, 0.7)) for _ in range(d_sae)],
        "name_valid": [bool(i % 3) for i in range(d_sae)],
        "level": [None if embedding or dead[i] else int(ladder[i % 3]) for i in range(d_sae)],
        "flag": ["dead" if dead[i] else "dense" if freq[i] > 0.5 else "" for i in range(d_sae)],
    }
    meta = {
        "title": f"msae dashboard: {'topk' if embedding else 'msae'} at "
                 f"{'hook_image_embed' if embedding else 'blocks.2.hook_resid_post'}",
        "sae": {"architecture": "topk" if embedding else "msae",
                "hook_name": "hook_image_embed" if embedding else "blocks.2.hook_resid_post",
                "d_in": 96, "d_sae": d_sae, "model_name": "msae-tiny-clip", "ladder": ladder,
                "k": None if embedding else 16, "source": "synthetic"},
        "n_images": 2000, "tokens_per_image": 1 if embedding else 17, "grid": grid,
        "image_score": "image embedding value" if embedding else "max over patch tokens",
        "classes": CLASSES, "page_size": page_size, "hist_bins": 20,
        "created": "2026-11-30T07:00:00Z", "latents": latents, "dense_threshold": 0.5,
    }

    def ex() -> dict:
        heat = None
        if grid is not None:
            heat = base64.b64encode(rng.integers(0, 256, 16, dtype=np.uint8).tobytes()).decode()
        return {"img": int(rng.integers(n_images)), "v": float(rng.uniform(0.1, 5)),
                "cls": int(rng.integers(-1, 10)), "heat": heat}

    cards = []
    for i in range(d_sae):
        if dead[i]:
            cards.append({"id": i, "heat_max": 0.0, "hist": {"lo": 0.0, "hi": 0.0,
                          "counts": [0] * 20}, "top": [], "intervals": [], "words": [],
                          "near_decoder": [], "near_coact": [], "class_dist": [0] * 10,
                          "logit_effect": [0.0] * 10, "levels": None})
            continue
        top = sorted((ex() for _ in range(8)), key=lambda e: -e["v"])
        cards.append({
            "id": i, "heat_max": float(mx[i]),
            "hist": {"lo": 0.0, "hi": float(mx[i]),
                     "counts": rng.integers(0, 50, 20).tolist()},
            "top": top,
            "intervals": [{"lo": j * mx[i] / 3, "hi": (j + 1) * mx[i] / 3,
                           "contains": 1 / 3, "examples": [ex() for _ in range(4)]}
                          for j in range(3)],
            "words": [[WORDS[(i + j) % 10], 0.6 - 0.1 * j] for j in range(4)],
            "near_decoder": [[int((i + j * 31) % d_sae), 0.5 - 0.05 * j] for j in range(1, 6)],
            "near_coact": [[int((i + j * 17) % d_sae), 0.4 - 0.05 * j] for j in range(1, 6)],
            "class_dist": np.bincount([max(e["cls"], 0) for e in top], minlength=10).tolist(),
            "logit_effect": rng.normal(0, 0.3, 10).tolist(),
            "levels": None if embedding else [[4, 0.25], [8, 0.5], [16, 1.0]],
        })
    return meta, cards, thumbs


class _Dom(HTMLParser):
    """The bits of a dumped DOM the tests look at: cards, #count, #errors, body[data-ready]."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.cards: list[int] = []
        self.rows: list[int] = []
        self.targets: list[int] = []
        self.heat_canvases = 0
        self.ready = None
        self.errors_hidden = None
        self.texts: dict[str, str] = {"count": "", "errors": "", "cards": "", "head": ""}
        self._stack: list[tuple[str, str | None]] = []
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "body":
            self.ready = a.get("data-ready")
        if "card" in classes and "data-id" in a:
            self.cards.append(int(a["data-id"]))
            if "target" in classes:
                self.targets.append(int(a["data-id"]))
        if tag == "tr" and "data-id" in a:
            self.rows.append(int(a["data-id"]))
        if tag == "canvas" and "heat" in classes:
            self.heat_canvases += 1
        if a.get("id") == "errors":
            self.errors_hidden = "hidden" in a
        if tag not in ("br", "img", "input", "meta", "link", "hr"):
            self._stack.append((tag, a.get("id")))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident in self._stack:
            if ident in self.texts:
                self.texts[ident] += data


@pytest.fixture(scope="module")
def msae_site(tmp_path_factory) -> tuple[Path, dict, list[dict]]:
    meta, cards, thumbs = synthetic()
    out = write_site(tmp_path_factory.mktemp("dash") / "site", meta, cards, thumbs)
    return out, meta, cards


def _open(site: Path, hash_: str = "", **kw) -> tuple[_Dom, list[str]]:
    result = render((site / "index.html").as_uri() + hash_, **kw)
    return _Dom(result.dom), result.console_errors


def _open_many(site: Path, hashes: list[str]) -> list[tuple[_Dom, list[str]]]:
    """Render several states at once (each Chromium mostly waits on its own start-up)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda h: _open(site, h), hashes))


def _assert_clean(dom: _Dom, errors: list[str]) -> None:
    assert errors == [], errors
    assert dom.ready == "1"
    assert dom.errors_hidden and dom.texts["errors"].strip() == "", dom.texts["errors"]


def _count(dom: _Dom) -> int:
    m = re.match(r"\s*(\d+) latents?", dom.texts["count"])
    assert m, dom.texts["count"]
    return int(m.group(1))


# ---------- the writer ----------

def test_write_site_layout_and_rounding(msae_site) -> None:
    out, meta, _ = msae_site
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["dashboard.css", "dashboard.js", "data/meta.js"] + [
        f"data/page-{n:04d}.js" for n in range(5)] + ["data/thumbs.png", "index.html"]
    text = (out / "data" / "meta.js").read_text()
    assert text.startswith("window.MSAE_DASH = window.MSAE_DASH || {pages: {}};")
    written = json.loads(text.split("window.MSAE_DASH.meta = ", 1)[1].rstrip().rstrip(";"))
    assert written["page_size"] == 64 and written["n_pages"] == 5
    assert written["thumb"] == {"file": "data/thumbs.png", "size": 16, "per_row": 48, "count": 48}
    assert "thumb" not in meta  # the caller's dict is left alone
    # 4 significant digits: no float in the data has more
    digits = [len(re.sub(r"[^0-9]", "", f.split("e")[0]).lstrip("0"))
              for f in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", text)]
    assert digits and max(digits) <= 4
    assert written["latents"]["freq_image"][0] == float(f"{meta['latents']['freq_image'][0]:.4g}")
    page3 = (out / "data" / "page-0003.js").read_text()
    cards3 = json.loads(page3.split("window.MSAE_DASH.pages[3] = ", 1)[1].rstrip().rstrip(";"))
    assert [c["id"] for c in cards3] == list(range(192, 256))
    sheet = Image.open(out / "data" / "thumbs.png")
    assert sheet.size == (48 * 16, 16)
    assert site_size(out) == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def test_write_site_rejects_bad_inputs(tmp_path) -> None:
    meta, cards, thumbs = synthetic(d_sae=40, page_size=16)
    with pytest.raises(DashboardSiteError, match="got 39 cards for d_sae = 40"):
        write_site(tmp_path / "a", meta, cards[:-1], thumbs)
    bad = [dict(c) for c in cards]
    bad[3] = {k: v for k, v in bad[3].items() if k != "id"}
    with pytest.raises(DashboardSiteError, match="position 3 has no integer 'id'"):
        write_site(tmp_path / "a", meta, bad, thumbs)
    bad[3] = dict(cards[3], id=2)
    with pytest.raises(DashboardSiteError, match="latent 2 has two cards"):
        write_site(tmp_path / "a", meta, bad, thumbs)
    with pytest.raises(DashboardSiteError, match="page_size is 0"):
        write_site(tmp_path / "a", dict(meta, page_size=0), cards, thumbs)
    with pytest.raises(DashboardSiteError, match="expected uint8"):
        write_site(tmp_path / "a", meta, cards, thumbs.astype(np.float32))
    with pytest.raises(DashboardSiteError, match="thumbs holds 5 images"):
        write_site(tmp_path / "a", meta, cards, thumbs[:5])
    short = dict(meta, latents=dict(meta["latents"], max=[1.0]))
    with pytest.raises(DashboardSiteError, match=r"\['max'\] is of length 1"):
        write_site(tmp_path / "a", short, cards, thumbs)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(DashboardSiteError, match="is a folder that is not a dashboard"):
        write_site(other, meta, cards, thumbs)
    with pytest.raises(DashboardSiteError, match="is a file"):
        check_site_dir(other / "keep.txt")
    assert check_site_dir(tmp_path / "new") == tmp_path / "new"
    assert (other / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists()


def test_interrupted_build_keeps_the_previous_site(tmp_path, monkeypatch) -> None:
    meta, cards, thumbs = synthetic(d_sae=40, page_size=16)
    out = write_site(tmp_path / "site", meta, cards, thumbs)
    before = {p.name: p.read_bytes() for p in (out / "data").iterdir()}
    real = site_mod._script

    def dies_on_page_2(assignment: str, value):  # a kill in the middle of the page files
        if assignment == "pages[2]":
            raise KeyboardInterrupt
        return real(assignment, value)

    monkeypatch.setattr(site_mod, "_script", dies_on_page_2)
    changed = dict(meta, title="new title")
    with pytest.raises(KeyboardInterrupt):
        write_site(out, changed, cards, thumbs)
    assert {p.name: p.read_bytes() for p in (out / "data").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["site"]  # no staging folder left behind
    monkeypatch.setattr(site_mod, "_script", real)
    write_site(out, changed, cards, thumbs)  # replacing a previous site works
    assert "new title" in (out / "data" / "meta.js").read_text()


# ---------- the page in a real browser ----------

def test_default_view_renders_cleanly(msae_site, tmp_path) -> None:
    out, meta, _ = msae_site
    shot = tmp_path / "shot.png"
    dom, errors = _open(out, screenshot=shot)
    _assert_clean(dom, errors)
    assert _count(dom) == 300
    assert dom.cards == list(range(12))  # default: sorted by id, 12 per view
    assert dom.rows == dom.cards  # the index lists the current view only
    for text in ("msae", "blocks.2.hook_resid_post", "max over patch tokens", "4, 8, 16"):
        assert text in dom.texts["head"]
    assert dom.heat_canvases > 0
    assert "dead \u2014 never fired on the 2000 images" in dom.texts["cards"]  # latent 5
    assert "k = 16" in dom.texts["cards"] and "interval" in dom.texts["cards"]
    # the screenshot shows a page, not a blank sheet
    assert shot.stat().st_size > 20_000
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1600, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200


def test_search_sort_and_dead_filter(msae_site) -> None:
    out, meta, _ = msae_site
    names = meta["latents"]["name"]
    freq = np.asarray(meta["latents"]["freq_image"])
    want = [i for i, n in enumerate(names) if "red" in n.lower()]
    assert 0 < len(want) < 300
    n_dead = sum(f == "dead" for f in meta["latents"]["flag"])
    alive = np.where(freq > 0)[0]
    red, nothing, by_id, desc, asc_alive = _open_many(out, [
        "#q=red&per=100", "#q=nosuchname", "#q=42", "#sort=freq&dir=desc",
        "#sort=freq&dir=asc&dead=hide",
    ])
    for dom, errors in (red, nothing, by_id, desc, asc_alive):
        _assert_clean(dom, errors)
    assert _count(red[0]) == len(want)
    assert sorted(red[0].cards) == want  # exactly the latents whose name contains "red"
    assert _count(nothing[0]) == 0 and nothing[0].cards == [] and nothing[0].rows == []
    assert _count(by_id[0]) == 1 and by_id[0].cards == [42]  # a number matches the id exactly
    assert desc[0].cards[0] == int(np.argmax(freq))
    assert desc[0].cards == [int(i) for i in np.argsort(-freq, kind="stable")[:12]]
    assert _count(asc_alive[0]) == 300 - n_dead
    assert asc_alive[0].cards[0] == int(alive[np.argmin(freq[alive])])
    assert not any(i in asc_alive[0].cards for i in np.where(freq == 0)[0])


def test_jump_to_latent_loads_its_page(msae_site) -> None:
    out, meta, _ = msae_site
    jump, hidden, spread = _open_many(out, [
        "#latent=250&per=12", "#q=red&latent=3", "#sort=freq&dir=desc&per=24"])
    for dom, errors in (jump, hidden, spread):
        _assert_clean(dom, errors)
    assert jump[0].targets == [250]
    assert jump[0].cards == list(range(240, 252))  # the view containing it (sorted by id)
    # a latent hidden by the search is still shown: the filter is cleared
    assert hidden[0].targets == [3] and _count(hidden[0]) == 300
    # one view spanning several page files: every card rendered with its data
    assert len({i // 64 for i in spread[0].cards}) >= 3
    assert "missing from" not in spread[0].texts["cards"]
    assert spread[0].texts["cards"].count("Top images") == 24 - sum(
        meta["latents"]["flag"][i] == "dead" for i in spread[0].cards)


def test_embedding_hook_site_without_heat_or_ladder(tmp_path) -> None:
    meta, cards, thumbs = synthetic(d_sae=70, page_size=32, embedding=True)
    out = write_site(tmp_path / "site", meta, cards, thumbs)
    dom, errors = _open(out, "#per=48&sort=max&dir=desc")
    _assert_clean(dom, errors)
    assert len(dom.cards) == 48 and dom.heat_canvases == 0
    assert "MSAE level survival" not in dom.texts["cards"]
    assert "Top images" in dom.texts["cards"]


def _copy_site(src: Path, dest: Path) -> Path:
    for p in src.rglob("*"):
        if p.is_file():
            target = dest / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(p.read_bytes())
    return dest


def test_broken_files_are_reported(msae_site, tmp_path) -> None:
    """The harness must be able to fail: broken or missing files show up as errors."""
    assert console_errors('[1:1:1130/0:INFO:CONSOLE:1] "Uncaught x", source: a.js (3)') == [
        "Uncaught x (a.js:3)"]
    out, _, _ = msae_site
    pages = _copy_site(out, tmp_path / "pages")
    (pages / "data" / "page-0000.js").write_text("window.MSAE_DASH.pages[0] = [{\"id\": 0,,\n")
    (pages / "data" / "page-0001.js").unlink()
    no_meta = _copy_site(out, tmp_path / "no_meta")
    (no_meta / "data" / "meta.js").unlink()
    bad_js = _copy_site(out, tmp_path / "bad_js")
    (bad_js / "dashboard.js").write_text((out / "dashboard.js").read_text() + "\nnoSuchFn();\n")
    with ThreadPoolExecutor(max_workers=4) as pool:
        corrupt, missing, meta_gone, js = pool.map(lambda a: _open(*a), [
            (pages, ""), (pages, "#latent=70"), (no_meta, ""), (bad_js, "#latent=200")])
    dom, errors = corrupt
    assert any("SyntaxError" in e for e in errors), errors
    assert not dom.errors_hidden and "page-0000.js" in dom.texts["errors"]
    assert dom.ready == "1"
    dom, errors = missing
    assert "could not load data/page-0001.js" in dom.texts["errors"] and not dom.errors_hidden
    assert 70 in dom.cards  # the card is there, saying its data is missing
    dom, errors = meta_gone
    assert "could not load data/meta.js" in dom.texts["errors"] and dom.cards == []
    dom, errors = js
    assert any("noSuchFn" in e for e in errors), errors
    assert "a script failed" in dom.texts["errors"] and not dom.errors_hidden


DRIVER = r"""
(function () {
  // clicks and types like a user, one step per settled render; the log lands in <pre id=drive>
  var log = [];
  function ready(cb) {
    var t = setInterval(function () {
      if (document.body.dataset.ready === "1") { clearInterval(t); cb(); }
    }, 20);
  }
  function snap(label) {
    var cards = document.querySelectorAll(".card");
    var target = document.querySelector(".card.target");
    log.push({label: label, hash: location.hash, n: cards.length,
              first: cards.length ? +cards[0].dataset.id : null,
              target: target ? +target.dataset.id : null,
              count: document.getElementById("count").textContent,
              raw: document.querySelectorAll(".card.raw").length});
  }
  var steps = [
    ["sort max", function () { document.querySelector('th[data-sort="max"]').click(); }],
    ["sort max again", function () { document.querySelector('th[data-sort="max"]').click(); }],
    ["next", function () { document.getElementById("next").click(); }],
    ["arrow right", function () {
      document.dispatchEvent(new KeyboardEvent("keydown", {key: "ArrowRight", bubbles: true}));
    }],
    ["search red", function () {
      var s = document.getElementById("search");
      s.value = "red";
      s.dispatchEvent(new Event("input", {bubbles: true}));
    }],
    ["hide dead", function () { document.getElementById("hide-dead").click(); }],
    ["toggle raw", function () { document.querySelector(".card .toggle").click(); }],
    ["neighbour", function () { document.querySelector(".near a").click(); }],
    ["jump 123", function () {
      document.getElementById("jump").value = "123";
      document.getElementById("jump-form").requestSubmit();
    }],
    ["per 6", function () {
      var p = document.getElementById("per");
      p.value = "6";
      p.dispatchEvent(new Event("change", {bubbles: true}));
    }]
  ];
  function run(i) {
    if (i === steps.length) {
      var pre = document.createElement("pre");
      pre.id = "drive";
      pre.textContent = JSON.stringify(log);
      document.body.appendChild(pre);
      return;
    }
    steps[i][1]();
    setTimeout(function () { ready(function () { snap(steps[i][0]); run(i + 1); }); }, 400);
  }
  ready(function () { snap("start"); run(0); });
})();
"""


def test_controls_drive_the_page(msae_site, tmp_path) -> None:
    """Clicks on headers, prev/next, search typing, the filter, toggles and links all work."""
    out, meta, cards = msae_site
    site = _copy_site(out, tmp_path / "site")
    (site / "drive.js").write_text(DRIVER)
    index = (site / "index.html").read_text()
    (site / "index.html").write_text(index.replace(
        '<script src="dashboard.js"></script>',
        '<script src="dashboard.js"></script>\n<script src="drive.js"></script>'))
    result = render((site / "index.html").as_uri(), budget_ms=20000)
    assert result.console_errors == []
    m = re.search(r'<pre id="drive">(.*?)</pre>', result.dom, re.S)
    assert m, "the driver did not finish"
    log = {s["label"]: s for s in json.loads(html.unescape(m.group(1)))}
    mx = np.asarray(meta["latents"]["max"])
    desc = [int(i) for i in np.argsort(-mx, kind="stable")]
    asc = [int(i) for i in np.argsort(mx, kind="stable")]
    assert log["start"]["first"] == 0 and log["start"]["n"] == 12
    assert log["sort max"]["first"] == desc[0] and "sort=max&dir=desc" in log["sort max"]["hash"]
    assert log["sort max again"]["first"] == asc[0] and "dir=asc" in log["sort max again"]["hash"]
    assert log["next"]["first"] == asc[12] and "view=1" in log["next"]["hash"]
    assert log["arrow right"]["first"] == asc[24]
    names = meta["latents"]["name"]
    n_red = sum("red" in n for n in names)
    assert log["search red"]["count"].startswith(f"{n_red} latents")
    assert "q=red" in log["search red"]["hash"] and "view=0" in log["search red"]["hash"]
    assert log["hide dead"]["count"].startswith(f"{n_red} latents")  # dead ones have no name
    assert "dead=hide" in log["hide dead"]["hash"]
    assert log["toggle raw"]["raw"] == 1
    first_red = log["hide dead"]["first"]
    neighbour = cards[first_red]["near_decoder"][0][0]
    assert log["neighbour"]["target"] == neighbour
    assert log["jump 123"]["target"] == 123 and "latent=123" in log["jump 123"]["hash"]
    assert log["per 6"]["n"] == 6 and "per=6" in log["per 6"]["hash"]
