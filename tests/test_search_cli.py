"""``msae search`` (msae_plugin.commands.search), run in-process on the shipped release's
``hook_image_embed`` MSAE (no training): the concept edit moves the results the right way, the
unedited search is plain CLIP retrieval recomputed here, the outputs are written, and every bad
input gets its own clear error (those that need no model are refused before it loads)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from sae_lens import SAE

from msae_plugin.cli import main
from msae_plugin.embedded.dataset import COLOURS, make_digit_scenes
from msae_plugin.releases import EMBEDDED_RELEASE
from msae_plugin.vision.hooked_clip import HookedOpenCLIP

RELEASE = f"{EMBEDDED_RELEASE}:hook_image_embed"
RED = list(COLOURS).index("red")
GALLERY = 1000  # the command's default; seed 0


@pytest.fixture(scope="module")
def gallery():
    """The command's default gallery, rebuilt here: scenes and their CLIP embeddings."""
    scenes = make_digit_scenes(GALLERY, "test", seed=0)
    model = HookedOpenCLIP.from_pretrained("msae-tiny-clip").eval()
    with torch.no_grad():
        emb = model.encode_image(model.preprocess(scenes.images)).float()
    return scenes, emb


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the command gets as far as loading the CLIP model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(HookedOpenCLIP, "from_pretrained", refuse)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["search", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _red_share(scenes, rows) -> float:
    return sum(int(scenes.attributes["colour"][r["index"]]) == RED for r in rows) / len(rows)


def _check_query_results(data, scenes, emb) -> None:
    """Per query: ``top`` results, the query left out, and the unedited list = cosine top-k
    over the other gallery images, recomputed independently."""
    for q in data["queries"]:
        for key in ("plain", "edited"):
            rows = q[key]
            assert len(rows) == data["top"]
            assert q["index"] not in [r["index"] for r in rows]
            assert [r["rank"] for r in rows] == list(range(1, data["top"] + 1))
        cos = F.normalize(emb[q["index"]], dim=-1) @ F.normalize(emb, dim=-1).T
        cos[q["index"]] = -2
        expected = cos.topk(data["top"]).indices.tolist()
        assert [r["index"] for r in q["plain"]] == expected


def test_adding_red_raises_the_red_share_for_non_red_queries(gallery, tmp_path, capsys) -> None:
    scenes, emb = gallery
    queries = [i for i in range(GALLERY) if int(scenes.attributes["colour"][i]) != RED][:4]
    code, out, err = _run(capsys, RELEASE, "--image-index", *map(str, queries),
                          "--concept", "red", "--out", str(tmp_path))
    assert code == 0, err
    data = json.loads((tmp_path / "search.json").read_text())
    assert data["mode"] == "add" and data["latents"]
    _check_query_results(data, scenes, emb)
    plain = sum(_red_share(scenes, q["plain"]) for q in data["queries"]) / len(queries)
    added = sum(_red_share(scenes, q["edited"]) for q in data["queries"]) / len(queries)
    assert added > plain + 0.4, (plain, added)  # measured 0.08 -> 0.97
    assert data["summary"]["share_plain"] == pytest.approx(plain)
    assert data["summary"]["share_edited"] == pytest.approx(added)
    # the default strength is the concept latents' largest code on the gallery, printed
    sae = SAE.from_pretrained(EMBEDDED_RELEASE, "hook_image_embed").eval()
    with torch.no_grad():
        largest = float(sae.encode(emb, k=sae.cfg.d_sae)[:, data["latents"]].max())
    assert data["strength"] == pytest.approx(largest, rel=1e-4)
    assert f"strength {largest:.3f}" in out
    assert f"red share of the top 10 {plain:.2f} unedited -> {added:.2f}" in out
    assert out.count("| rank | index | cosine | label | colour |") == len(queries)
    png = (tmp_path / "search.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_removing_red_lowers_the_red_share_for_red_queries(gallery, tmp_path, capsys) -> None:
    """Also the folder form of SAE (the release saved to disk)."""
    scenes, emb = gallery
    folder = tmp_path / "sae"
    SAE.from_pretrained(EMBEDDED_RELEASE, "hook_image_embed").save_model(str(folder))
    queries = [i for i in range(GALLERY) if int(scenes.attributes["colour"][i]) == RED][:4]
    code, out, err = _run(capsys, str(folder), "--image-index", *map(str, queries),
                          "--concept", "red", "--mode", "remove", "--out", str(tmp_path / "o"))
    assert code == 0, err
    data = json.loads((tmp_path / "o" / "search.json").read_text())
    assert data["strength"] is None and data["mode"] == "remove"
    _check_query_results(data, scenes, emb)
    plain = sum(_red_share(scenes, q["plain"]) for q in data["queries"]) / len(queries)
    removed = sum(_red_share(scenes, q["edited"]) for q in data["queries"]) / len(queries)
    assert removed < plain - 0.3, (plain, removed)  # measured 0.95 -> 0.35
    assert "with 'red' removed" in out


def test_text_query_without_concept_is_plain_clip_search(gallery, tmp_path, capsys) -> None:
    scenes, _ = gallery
    code, out, err = _run(capsys, RELEASE, "--text", "a photo of a seven", "--top", "5",
                          "--out", str(tmp_path))
    assert code == 0, err
    data = json.loads((tmp_path / "search.json").read_text())
    (q,) = data["queries"]
    assert q["kind"] == "text" and q["edited"] is None and data["mode"] is None
    assert sum(r["label"] == 7 for r in q["plain"]) >= 4
    assert all(r["label"] == int(scenes.labels[r["index"]]) for r in q["plain"])
    assert "query: text 'a photo of a seven'" in out and (tmp_path / "search.png").exists()


def test_unknown_concept_names_the_nearest(tmp_path, capsys) -> None:
    code, _, err = _run(capsys, RELEASE, "--image-index", "0", "--concept", "rd",
                        "--gallery-size", "50", "--out", str(tmp_path))
    assert code == 2
    assert err.startswith("error: concept 'rd' is not in the vocabulary. Did you mean 'red'?")


# ---- refused before the model loads -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--image-index", "0", "--latent", "3", "512"],
         "--latent 512: SAE msae-tiny-clip-msae:hook_image_embed has 512 latents (ids 0 to 511)"),
        (["--image-index", "5", "1000"],
         "--image-index 1000: the gallery has 1000 images (indices 0 to 999)"),
        (["--image-index", "3", "--gallery-size", "10", "--top", "10"],
         "--top 10: an image query has only 9 other gallery images"),
        (["--text", "a seven", "--strength", "2"],
         "--strength edit(s) a concept, but neither --concept nor --latent was given"),
        (["--text", "a seven", "--concept", "red", "--mode", "remove", "--strength", "2"],
         "--strength is for --mode add"),
        (["--text", "  "], "--text is empty"),
    ],
    ids=["latent-range", "image-range", "top-vs-gallery", "strength-no-concept",
         "strength-remove", "empty-text"],
)
def test_bad_request_is_refused_before_the_model(no_model, tmp_path, capsys, argv, message):
    code, _, err = _run(capsys, RELEASE, *argv, "--out", str(tmp_path))
    assert code == 2
    assert err.startswith("error: ") and message in err, err


def test_sae_on_another_hook_is_refused(no_model, tmp_path, capsys) -> None:
    code, _, err = _run(capsys, f"{EMBEDDED_RELEASE}:blocks.2.hook_resid_post", "--text", "a",
                        "--out", str(tmp_path))
    assert code == 2
    assert "reads blocks.2.hook_resid_post, but msae search edits CLIP image embeddings" in err
    assert "needs an SAE on hook_image_embed" in err


def test_unknown_sae_is_refused(no_model, tmp_path, capsys) -> None:
    code, _, err = _run(capsys, f"{EMBEDDED_RELEASE}:nope", "--text", "a", "--out", str(tmp_path))
    assert code == 2 and "ID nope not found in release" in err
    code, _, err = _run(capsys, str(tmp_path / "no_sae"), "--text", "a", "--out", str(tmp_path))
    assert code == 2 and "no such folder. Pass an SAELens SAE folder or RELEASE:SAE_ID" in err


def test_unwritable_out_is_refused_before_the_sae_is_read(no_model, tmp_path, capsys) -> None:
    (tmp_path / "f").write_text("x")
    code, _, err = _run(capsys, str(tmp_path / "no_sae"), "--text", "a",
                        "--out", str(tmp_path / "f"))
    assert code == 2 and "--out" in err and "is a file, not a folder" in err
    (tmp_path / "o" / "search.png").mkdir(parents=True)
    code, _, err = _run(capsys, RELEASE, "--text", "a", "--out", str(tmp_path / "o"))
    assert code == 2 and "search.png is a folder" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "one of the arguments --image-index --text is required"),
        (["--image-index", "0", "--text", "a"], "not allowed with argument"),
        (["--text", "a", "--concept", "red", "--latent", "1"], "not allowed with argument"),
        (["--text", "a", "--strength", "nan"], "must be a finite number"),
    ],
    ids=["no-query", "both-queries", "concept-and-latent", "nan-strength"],
)
def test_usage_errors(no_model, capsys, argv, message) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["search", RELEASE, *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
