"""``msae dashboard`` end to end on the shipped MSAEs: the command writes the site, and the site
opens in a real headless Chromium from ``file://`` without console errors, with the right cards,
a working search and a screenshot (issue 11's browser checks, on real data)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from browser import render

from msae_plugin.cli import main

RELEASE = "msae-tiny-clip-msae"


def _meta(site: Path) -> dict:
    text = (site / "data" / "meta.js").read_text()
    return json.loads(text[text.index("{", text.index(".meta")):text.rstrip().rstrip(";").rindex("}") + 1])


@pytest.fixture(scope="module")
def patch_site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dash") / "site"
    assert main(["dashboard", f"{RELEASE}:blocks.2.hook_resid_post", "--n-images", "150",
                 "--out", str(out)]) == 0
    return out


def test_cli_writes_a_self_contained_site(patch_site, capsys):
    files = {p.relative_to(patch_site).as_posix() for p in patch_site.rglob("*") if p.is_file()}
    assert {"index.html", "dashboard.js", "dashboard.css", "data/meta.js",
            "data/thumbs.png", "data/page-0000.js", "data/page-0015.js"} <= files
    assert "data/page-0016.js" not in files  # 1024 latents / 64 per page
    for name in ("index.html", "dashboard.js", "dashboard.css"):  # offline: no CDN, no fetch
        text = (patch_site / name).read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//|url\(\s*[\"']?https?:", text)
        assert "fetch(" not in text and "XMLHttpRequest" not in text
    meta = _meta(patch_site)
    assert meta["sae"]["d_sae"] == 1024 and meta["grid"] == [8, 8] and meta["n_images"] == 150


def test_site_opens_in_chromium_with_cards_search_and_screenshot(patch_site, tmp_path):
    index = (patch_site / "index.html").resolve()
    shot = tmp_path / "dashboard.png"
    page = render(f"file://{index}", screenshot=shot)
    assert page.console_errors == []
    assert 'data-ready="1"' in page.dom
    assert len(re.findall(r'class="card[ "]', page.dom)) == 12  # the default view
    assert re.search(r'id="count"[^>]*>1024 latents', page.dom)
    assert re.search(r'id="errors"[^>]*>\s*</', page.dom)
    assert shot.stat().st_size > 20_000

    names = _meta(patch_site)["latents"]["name"]
    expected = sum("red" in n for n in names)
    assert expected > 0
    found = render(f"file://{index}#q=red&per=500")
    assert found.console_errors == []
    assert re.search(rf'id="count"[^>]*>{expected} latents', found.dom)
    ids = [int(i) for i in re.findall(r'class="card[^"]*" data-id="(\d+)"', found.dom)]
    assert sorted(ids) == [j for j, n in enumerate(names) if "red" in n]
    # a latent far from the first page: its page file is loaded on demand
    far = render(f"file://{index}#latent=1000")
    assert 'data-id="1000"' in far.dom and far.console_errors == []


def test_embedding_hook_site_has_no_heat_maps(tmp_path):
    out = tmp_path / "embed"
    assert main(["dashboard", f"{RELEASE}:hook_image_embed", "--n-images", "120",
                 "--out", str(out), "--page-size", "128"]) == 0
    meta = _meta(out)
    assert meta["grid"] is None and meta["tokens_per_image"] == 1
    page = render(f"file://{(out / 'index.html').resolve()}")
    assert page.console_errors == [] and "<canvas" not in page.dom.split('id="cards"')[-1]


def test_cli_bad_inputs_exit_2_with_the_fix(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["dashboard", f"{RELEASE}:hook_image_embed", "--out", str(blocker)]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["dashboard", f"{RELEASE}:hook_image_embed", "--page-size", "2000",
                 "--out", str(tmp_path / "a")]) == 2
    assert "page_size must be" in capsys.readouterr().err
    assert main(["dashboard", str(tmp_path / "missing"), "--out", str(tmp_path / "b")]) == 2
    assert "missing" in capsys.readouterr().err
    other = tmp_path / "not_a_site"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["dashboard", f"{RELEASE}:hook_image_embed", "--out", str(other)]) == 2
    assert "would delete it" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty_images"
    empty.mkdir()
    assert main(["dashboard", f"{RELEASE}:hook_image_embed", "--images", str(empty),
                 "--out", str(tmp_path / "c")]) == 2
    assert "no image files" in capsys.readouterr().err
