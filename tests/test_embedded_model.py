"""The embedded default CLIP model ("msae-tiny-clip"): shipped weights, tokenizer, scene data."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import torch

from msae_plugin.embedded import (
    CLASS_NAMES,
    EMBEDDED_MODEL_NAME,
    IMAGE_SIZE,
    ZERO_SHOT_TEMPLATES,
    WordTokenizer,
    build_embedded_clip,
    build_zero_shot_classifier,
    embedded_model_config,
    load_embedded_clip,
    make_digit_scenes,
    normalize,
    zero_shot_accuracy,
    zero_shot_logits,
)
from msae_plugin.embedded.dataset import (
    LOOP_DIGITS,
    STRAIGHT_DIGITS,
    caption_vocabulary,
    compute_image_stats,
    split_indices,
)
from msae_plugin.embedded.model import WEIGHTS_FILENAME, default_weights_path
from msae_plugin.embedded.zero_shot import encode_scene_images

EMBEDDED_DIR = Path(str(resources.files("msae_plugin.embedded")))
TEST_SEED = 777  # differs from the training seeds (0..) and the model card's eval seed (10000)


@pytest.fixture(scope="module")
def clip_and_tok():
    return load_embedded_clip()


@pytest.fixture(scope="module")
def training_log() -> dict:
    return json.loads((EMBEDDED_DIR / "training_log.json").read_text())


# --- shipped weights --------------------------------------------------------------------------


def test_weights_are_package_data():
    path = default_weights_path()
    assert path.name == WEIGHTS_FILENAME and path.is_file()
    assert path.stat().st_size <= 3 * 1024 * 1024  # fp16, <= 3 MB
    assert (EMBEDDED_DIR / "MODEL_CARD.md").is_file()


def test_load_shapes_and_dtype(clip_and_tok):
    import open_clip

    model, tok = clip_and_tok
    cfg = embedded_model_config()
    assert isinstance(model, open_clip.model.CLIP)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tok.vocab_size == cfg["text_cfg"]["vocab_size"] == model.vocab_size
    assert model.visual.preprocess_cfg["size"] == IMAGE_SIZE
    images = normalize(make_digit_scenes(4, "test", TEST_SEED).images)
    with torch.no_grad():
        img = model.encode_image(images)
        txt = model.encode_text(tok(["a red seven", "the digit zero on a dark background"]))
    assert img.shape == (4, cfg["embed_dim"])
    assert txt.shape == (2, cfg["embed_dim"])
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()


def test_zero_shot_accuracy_on_fresh_test_scenes(clip_and_tok, training_log):
    model, tok = clip_and_tok
    scenes = make_digit_scenes(500, "test", TEST_SEED)
    feats = encode_scene_images(model, scenes.images)
    clf = build_zero_shot_classifier(model, tok)
    assert clf.shape == (len(CLASS_NAMES), embedded_model_config()["embed_dim"])
    assert torch.allclose(clf.norm(dim=-1), torch.ones(len(CLASS_NAMES)), atol=1e-5)
    acc = zero_shot_accuracy(feats, clf, scenes.labels)
    reported = training_log["zero_shot_test"]["digit"]
    # A fresh 500-scene sample: allow sampling noise below the card's 2000-scene figure.
    assert acc >= reported - 0.06, (acc, reported)
    assert acc >= 0.7  # far above chance (10 %)
    logits = zero_shot_logits(feats, clf)
    assert logits.shape == (500, len(CLASS_NAMES))


def test_colour_zero_shot_is_easy(clip_and_tok):
    model, tok = clip_and_tok
    scenes = make_digit_scenes(200, "test", TEST_SEED + 1)
    feats = encode_scene_images(model, scenes.images)
    names = scenes.attribute_names["colour"]
    clf = build_zero_shot_classifier(model, tok, names, ["a {} digit", "the digit in {}"])
    assert zero_shot_accuracy(feats, clf, scenes.attributes["colour"]) >= 0.9


def test_missing_weights_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_embedded_clip.py"):
        load_embedded_clip(weights_path=tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    with pytest.raises(FileNotFoundError, match="corrupt"):
        load_embedded_clip(weights_path=bad)


def test_mismatched_weights_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"visual.proj": torch.zeros(2, 2)}, str(path))
    with pytest.raises(FileNotFoundError, match="train_embedded_clip.py"):
        load_embedded_clip(weights_path=path)


def test_build_is_a_fresh_clip():
    model = build_embedded_clip()
    assert model.context_length == embedded_model_config()["text_cfg"]["context_length"]
    assert EMBEDDED_MODEL_NAME == "msae-tiny-clip"


# --- tokenizer --------------------------------------------------------------------------------


def test_tokenizer_round_trip_and_layout():
    tok = WordTokenizer()
    text = "a photo of a bold red seven, an odd digit without a loop, tilted left"
    ids = tok(text)
    assert ids.shape == (1, tok.context_length) and ids.dtype == torch.long
    row = ids[0]
    assert row[0] == tok.sot_token_id
    n_words = len(tok.words(text))
    assert row[n_words + 1] == tok.eot_token_id
    assert (row[n_words + 2 :] == 0).all()
    assert tok.decode(row) == " ".join(tok.words(text))
    assert tok.decode(row) == text.replace(",", "")


def test_tokenizer_eot_is_max_and_argmax_pools_there():
    tok = WordTokenizer()
    assert tok.eot_token_id == tok.vocab_size - 1 == max(tok.stoi.values())
    assert tok.pad_id == 0
    batch = tok(["the digit zero", "zebra crossing", ""], context_length=12)
    eot_pos = (batch == tok.eot_token_id).int().argmax(-1)
    assert torch.equal(batch.argmax(-1), eot_pos)  # open_clip's text_pool_type="argmax"
    assert batch[1, 1] == tok.unk_id and batch[1, 2] == tok.unk_id  # unknown words
    assert batch[2, 1] == tok.eot_token_id  # empty text: [sot, eot]


def test_tokenizer_truncation_keeps_eot_last():
    tok = WordTokenizer()
    ids = tok("one two three four five six seven eight nine", context_length=5)
    assert ids.tolist() == [[tok.sot_token_id, *tok.encode("one two three"), tok.eot_token_id]]
    assert tok.decode(ids[0]) == "one two three"


def test_vocabulary_covers_every_caption_without_truncation():
    tok = WordTokenizer()
    assert set(caption_vocabulary()) <= set(tok.stoi)
    scenes = make_digit_scenes(3000, "train", 3)
    ids = tok(scenes.captions + [t.format(c) for t in ZERO_SHOT_TEMPLATES for c in CLASS_NAMES])
    assert not (ids == tok.unk_id).any()
    assert ((ids == tok.eot_token_id).sum(-1) == 1).all()
    lengths = torch.tensor([len(tok.words(c)) for c in scenes.captions])
    assert int(lengths.max()) + 2 <= tok.context_length  # nothing is truncated


# --- dataset ----------------------------------------------------------------------------------


def test_dataset_determinism_and_format():
    a = make_digit_scenes(64, "train", 5)
    b = make_digit_scenes(64, "train", 5)
    c = make_digit_scenes(64, "train", 6)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.captions == b.captions
    assert all(torch.equal(a.attributes[k], b.attributes[k]) for k in a.attributes)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (64, 3, IMAGE_SIZE, IMAGE_SIZE) and a.images.dtype == torch.float32
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert a.labels.dtype == torch.long and len(a) == 64
    assert make_digit_scenes(0, "test").images.shape == (0, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_splits_use_disjoint_source_digits():
    train, test = split_indices("train"), split_indices("test")
    assert len(train) + len(test) == 1797 and len(set(train.tolist()) & set(test.tolist())) == 0
    s = make_digit_scenes(200, "test", 1)
    assert set(s.source_index.tolist()) <= set(test.tolist())
    with pytest.raises(ValueError):
        make_digit_scenes(4, "validation")


def test_attributes_are_consistent_with_labels_and_captions():
    s = make_digit_scenes(400, "train", 11)
    labels = s.labels
    assert torch.equal(s.attributes["parity"], labels % 2)
    loop = torch.tensor([int(d in LOOP_DIGITS) for d in labels.tolist()])
    straight = torch.tensor([int(d in STRAIGHT_DIGITS) for d in labels.tolist()])
    assert torch.equal(s.attributes["loop"], loop)
    assert torch.equal(s.attributes["stroke"], straight)
    for name, codes in s.attributes.items():
        assert 0 <= int(codes.min()) and int(codes.max()) < len(s.attribute_names[name])
    for i, caption in enumerate(s.captions):
        words = caption.replace(",", "").split()
        assert CLASS_NAMES[int(labels[i])] in words  # every caption names its digit
        for d in range(10):
            if d != int(labels[i]):
                assert CLASS_NAMES[d] not in words
        parity = s.attribute_names["parity"][int(s.attributes["parity"][i])]
        other = "odd" if parity == "even" else "even"
        assert other not in words
        if "loop" in words:
            assert ("without a loop" in caption) == (int(s.attributes["loop"][i]) == 0)
        colour = s.attribute_names["colour"][int(s.attributes["colour"][i])]
        assert not any(c in words for c in s.attribute_names["colour"] if c != colour)
        rotation = s.attribute_names["rotation"][int(s.attributes["rotation"][i])]
        if "tilted" in words or "upright" in words:
            assert rotation in caption
    # Colour really is in the pixels: red scenes have more red than blue ink at the brightest.
    red = s.attributes["colour"] == s.attribute_names["colour"].index("red")
    top = s.images[red].flatten(2).max(-1).values  # [n_red, 3]
    assert (top[:, 0] > top[:, 2]).all()


def test_image_stats_match_constants():
    from msae_plugin.embedded.dataset import IMAGE_MEAN, IMAGE_STD

    mean, std = compute_image_stats(n=2000, seed=0)
    assert torch.allclose(torch.tensor(mean), torch.tensor(IMAGE_MEAN), atol=0.01)
    assert torch.allclose(torch.tensor(std), torch.tensor(IMAGE_STD), atol=0.01)
