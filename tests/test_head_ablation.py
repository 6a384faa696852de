"""Attention-head ablation scan: every head's effect against an independent computation on the
OpenCLIP model itself (zero ablation: the head's columns of ``out_proj`` zeroed in a deep copy;
mean ablation: the block's attention replaced by a hand-written one), plus result shapes,
serialisation, the heat map, bad inputs and the CLI."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn

from msae_plugin.errors import ModelInputError
from msae_plugin.vision.head_ablation import HeadAblationResult, HeadScore, head_ablation_scan
from msae_plugin.vision.hooked_clip import HookedOpenCLIP

TOL = 1e-5
N_CLASSES = 5


def tiny_clip(vision: dict | None = None) -> nn.Module:
    vcfg = dict(image_size=16, patch_size=4, width=32, layers=3, head_width=8)  # 3 x 4 heads
    vcfg.update(vision or {})
    torch.manual_seed(0)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    return CLIP(embed_dim=24, vision_cfg=vcfg, text_cfg=text).eval()


def data(n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=g)
    labels = torch.randint(0, N_CLASSES, (n,), generator=g)
    classifier = F.normalize(torch.randn(N_CLASSES, 24, generator=g), dim=-1)
    return images, labels, classifier


def loss_acc(clip: nn.Module, images, labels, classifier) -> tuple[float, float]:
    """Zero-shot loss/accuracy straight from open_clip's encode_image."""
    with torch.no_grad():
        feats = F.normalize(clip.encode_image(images), dim=-1)
        logits = clip.logit_scale.exp() * feats @ classifier.T
    acc = int((logits.argmax(-1) == labels).sum()) / len(labels)
    return F.cross_entropy(logits, labels).item(), acc


def zero_head_copy(clip: nn.Module, layer: int, head: int) -> nn.Module:
    """Deep copy with head ``head`` of block ``layer`` removed: its input columns of
    ``out_proj`` (the head's slice of the concatenated head outputs) set to zero."""
    ablated = copy.deepcopy(clip)
    attn = ablated.visual.transformer.resblocks[layer].attn
    d_head = attn.head_dim
    with torch.no_grad():
        attn.out_proj.weight[:, head * d_head : (head + 1) * d_head] = 0.0
    return ablated


class ManualAttention(nn.Module):
    """Hand-written self-attention over an ``nn.MultiheadAttention``'s weights that records the
    per-head outputs ``z`` ``[b, pos, head, d_head]`` and optionally replaces one head's."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha
        self.recorded: list[torch.Tensor] = []
        self.replace: tuple[int, torch.Tensor] | None = None

    def forward(self, q_x, k_x=None, v_x=None, need_weights=False, attn_mask=None):
        b, n, d = q_x.shape
        h = self.mha.num_heads
        q, k, v = (q_x @ self.mha.in_proj_weight.T + self.mha.in_proj_bias).split(d, dim=-1)
        q, k, v = (t.view(b, n, h, d // h).permute(0, 2, 1, 3) for t in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)
        z = (att @ v).permute(0, 2, 1, 3).clone()  # [b, n, h, d_head]
        self.recorded.append(z.clone())
        if self.replace is not None:
            head, value = self.replace
            z[:, :, head] = value
        return self.mha.out_proj(z.reshape(b, n, d)), None


def test_zero_ablation_matches_out_proj_columns_zeroed() -> None:
    clip = tiny_clip()
    model = HookedOpenCLIP(clip, model_name="tiny-test")
    images, labels, classifier = data()
    res = head_ablation_scan(model, images, labels, classifier, batch_size=10, progress=False)
    base_loss, base_acc = loss_acc(clip, images, labels, classifier)
    assert res.baseline_loss == pytest.approx(base_loss, abs=TOL)
    assert res.baseline_acc == pytest.approx(base_acc, abs=1e-12)
    for layer in range(3):
        for head in range(4):
            loss, acc = loss_acc(zero_head_copy(clip, layer, head), images, labels, classifier)
            assert abs(res.delta_loss[layer, head] - (loss - base_loss)) <= TOL, (layer, head)
            assert res.delta_acc[layer, head] == pytest.approx(acc - base_acc, abs=1e-12)
    assert res.delta_loss.abs().max() > 1e-3  # the random heads do matter
    assert res.extra["resumed"] is True


def test_resumed_and_full_forward_agree_and_layer_subset() -> None:
    clip = tiny_clip(dict(final_ln_after_pool=True, pool_type="avg", ls_init_value=0.5))
    model = HookedOpenCLIP(clip)
    images, labels, classifier = data(n=9)
    fast = head_ablation_scan(model, images, labels, classifier, layers=[2, 1], batch_size=4,
                              progress=False)
    slow = head_ablation_scan(model, images, labels, classifier, layers=[1, 2], batch_size=4,
                              progress=False, resume=False)
    assert fast.layers == slow.layers == [1, 2]
    assert fast.extra["resume_check_max_abs_err"] <= TOL
    assert torch.allclose(fast.delta_loss[1:], slow.delta_loss[1:], atol=TOL)
    assert torch.equal(fast.delta_acc[1:], slow.delta_acc[1:])
    assert torch.isnan(fast.delta_loss[0]).all() and torch.isnan(fast.delta_acc[0]).all()
    loss, _ = loss_acc(zero_head_copy(clip, 2, 3), images, labels, classifier)
    assert abs(fast.delta_loss[2, 3] - (loss - fast.baseline_loss)) <= TOL


def test_mean_ablation_matches_manual_attention() -> None:
    clip = tiny_clip()
    model = HookedOpenCLIP(clip)
    images, labels, classifier = data(n=12)
    res = head_ablation_scan(model, images, labels, classifier, mode="mean", batch_size=5,
                             progress=False)
    base_loss, _ = loss_acc(clip, images, labels, classifier)
    for layer, head in [(0, 1), (1, 3), (2, 0)]:
        manual = copy.deepcopy(clip)
        blk = manual.visual.transformer.resblocks[layer]
        blk.attn = ManualAttention(blk.attn)
        loss_acc(manual, images, labels, classifier)  # records z over all images
        mean = blk.attn.recorded[0].mean(dim=0)[:, head]  # [pos, d_head]
        blk.attn.replace = (head, mean)
        loss, acc = loss_acc(manual, images, labels, classifier)
        assert abs(res.delta_loss[layer, head] - (loss - base_loss)) <= TOL, (layer, head)
        assert res.delta_acc[layer, head] == pytest.approx(acc - res.baseline_acc, abs=1e-12)
    zero = head_ablation_scan(model, images, labels, classifier, batch_size=5, progress=False)
    assert (res.delta_loss - zero.delta_loss).abs().max() > 1e-3


def test_mean_ablation_of_a_single_image_changes_nothing() -> None:
    model = HookedOpenCLIP(tiny_clip())
    images, labels, classifier = data(n=1)
    res = head_ablation_scan(model, images, labels, classifier, mode="mean", progress=False)
    assert res.delta_loss.abs().max() <= TOL
    assert (res.delta_acc == 0).all()


def test_scan_with_a_spliced_sae_runs_full_forwards() -> None:
    from sae_lens import StandardSAE, StandardSAEConfig

    model = HookedOpenCLIP(tiny_clip())
    images, labels, classifier = data(n=6)
    cfg = StandardSAEConfig(d_in=32, d_sae=64)
    cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    torch.manual_seed(1)
    model.add_sae(StandardSAE(cfg), use_error_term=False)
    try:
        res = head_ablation_scan(model, images, labels, classifier, layers=[1], progress=False)
        with torch.no_grad():
            spliced = model.zero_shot_logits(images, classifier)
            with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z",
                                         lambda z, hook: z.index_fill(2, torch.tensor([2]), 0))]):
                ablated = model.zero_shot_logits(images, classifier)
    finally:
        model.reset_saes()
    assert res.extra["resumed"] is False
    assert res.baseline_loss == pytest.approx(F.cross_entropy(spliced, labels).item(), abs=TOL)
    delta = F.cross_entropy(ablated, labels).item() - res.baseline_loss
    assert abs(res.delta_loss[1, 2] - delta) <= TOL
    unspliced = head_ablation_scan(model, images, labels, classifier, layers=[1], progress=False)
    assert abs(unspliced.baseline_loss - res.baseline_loss) > 1e-3  # the SAE did change things


def test_result_shapes_top_markdown_json_and_heatmap(tmp_path) -> None:
    model = HookedOpenCLIP(tiny_clip(), model_name="tiny-test")
    images, labels, classifier = data(n=8)
    res = head_ablation_scan(model, images, labels, classifier, progress=False)
    assert res.delta_loss.shape == res.delta_acc.shape == (3, 4)
    assert (res.n_layers, res.n_heads, res.n_images, res.mode) == (3, 4, 8, "zero")
    assert torch.isfinite(res.delta_loss).all() and torch.isfinite(res.delta_acc).all()
    assert torch.allclose(res.ablated_loss, res.baseline_loss + res.delta_loss)

    top = res.top(3)
    assert len(top) == 3 and all(isinstance(s, HeadScore) for s in top)
    assert top[0].delta_loss == pytest.approx(float(res.delta_loss.max()))
    assert [s.delta_loss for s in top] == sorted((s.delta_loss for s in top), reverse=True)
    assert len(res.top(100)) == 12
    assert res.top(1, by="acc")[0].delta_acc == pytest.approx(float(res.delta_acc.min()))

    md = res.to_markdown()
    assert "| layer | H0 | H1 | H2 | H3 |" in md and "tiny-test" in md
    assert len(re.findall(r"^\| 2 \| [+-]", md, flags=re.M)) == 2  # layer 2 in each table

    path = res.to_json(tmp_path / "out" / "heads.json")
    loaded = json.loads(path.read_text())
    assert len(loaded["delta_loss"]) == 3 and len(loaded["delta_loss"][0]) == 4
    back = HeadAblationResult.from_json(path)
    assert torch.allclose(back.delta_loss, res.delta_loss) and back.layers == res.layers

    png = res.plot_heatmap(tmp_path / "out" / "heads.png")
    assert png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    part = head_ablation_scan(model, images, labels, classifier, layers=[1], progress=False)
    part.to_json(tmp_path / "part.json")  # NaN rows serialise as null
    assert json.loads((tmp_path / "part.json").read_text())["delta_loss"][0] == [None] * 4
    assert part.plot_heatmap(tmp_path / "part.png").stat().st_size > 1000
    assert {s.layer for s in part.top(10)} == {1}


def test_bad_inputs_raise_clear_errors() -> None:
    model = HookedOpenCLIP(tiny_clip())
    images, labels, classifier = data(n=4)
    with pytest.raises(ModelInputError, match=r"layer 3 is out of range.*3 blocks \(layers 0\.\.2\)"):
        head_ablation_scan(model, images, labels, classifier, layers=[3], progress=False)
    with pytest.raises(ModelInputError, match="out of range"):
        head_ablation_scan(model, images, labels, classifier, layers=[-1], progress=False)
    with pytest.raises(ValueError, match="empty image batch"):
        head_ablation_scan(model, images[:0], labels[:0], classifier, progress=False)
    with pytest.raises(ModelInputError, match="labels has 3 entries but there are 4 images"):
        head_ablation_scan(model, images, labels[:3], classifier, progress=False)
    with pytest.raises(ModelInputError, match=r"labels must lie in \[0, 4\]"):
        head_ablation_scan(model, images, labels + 5, classifier, progress=False)
    with pytest.raises(ModelInputError, match="width 7"):
        head_ablation_scan(model, images, labels, classifier[:, :7], progress=False)
    with pytest.raises(ModelInputError, match="mode must be one of"):
        head_ablation_scan(model, images, labels, classifier, mode="resample", progress=False)
    with pytest.raises(ModelInputError, match="batch_size"):
        head_ablation_scan(model, images, labels, classifier, batch_size=0, progress=False)
    with pytest.raises(ModelInputError, match="layers is empty"):
        head_ablation_scan(model, images, labels, classifier, layers=[], progress=False)
    res = head_ablation_scan(model, images, labels, classifier, layers=[0], progress=False)
    with pytest.raises(ModelInputError, match="by must be 'loss' or 'acc'"):
        res.top(3, by="x")
    for n in (-2, 0, 1.5, True):  # -2 used to give an empty list (and an empty CLI table)
        with pytest.raises(ModelInputError, match=f"must be a positive integer, got {n!r}"):
            res.top(n)
        with pytest.raises(ModelInputError, match="positive integer"):
            res.to_markdown(top=n)
    with pytest.raises(ModelInputError, match="batch_size"):
        head_ablation_scan(model, images, labels, classifier, batch_size=True, progress=False)


def _random_embedded(device="cpu", **_):
    """The embedded architecture with random weights (the CLI wiring without the weights file)."""
    from msae_plugin.embedded.model import build_embedded_clip
    from msae_plugin.embedded.tokenizer import WordTokenizer

    torch.manual_seed(0)
    return build_embedded_clip().to(device).eval(), WordTokenizer()


def test_cli_ablate_heads_writes_table_json_and_heatmap(tmp_path, capsys, monkeypatch) -> None:
    import msae_plugin.embedded
    from msae_plugin.cli import main

    monkeypatch.setattr(msae_plugin.embedded, "load_embedded_clip", _random_embedded,
                        raising=False)
    out = tmp_path / "heads"
    assert main(["ablate-heads", "--n-images", "12", "--mode", "mean", "--out", str(out),
                 "--layers", "0", "3", "--no-progress", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "heads_mean.json", "heads_mean.md", "heads_mean.png"]
    payload = json.loads((out / "heads_mean.json").read_text())
    assert payload["model_name"] == "msae-tiny-clip" and payload["n_images"] == 12
    n_heads = payload["n_heads"]
    assert payload["layers"] == [0, 3] and payload["delta_loss"][1] == [None] * n_heads
    assert f"Top {min(10, 2 * n_heads)} heads" in capsys.readouterr().out
    assert main(["ablate-heads", "--layers", "9", "--n-images", "2", "--out", str(out),
                 "--no-progress"]) == 2
    assert "error: layer 9 is out of range" in capsys.readouterr().err


def test_scan_on_the_trained_embedded_model() -> None:
    from msae_plugin.embedded import load_embedded_clip
    from msae_plugin.embedded.dataset import make_digit_scenes, normalize
    from msae_plugin.embedded.zero_shot import build_zero_shot_classifier

    clip, tokenizer = load_embedded_clip()
    model = HookedOpenCLIP(clip, model_name="msae-tiny-clip", tokenizer=tokenizer)
    scenes = make_digit_scenes(64, split="test", seed=0)
    classifier = build_zero_shot_classifier(clip, tokenizer)
    res = head_ablation_scan(model, normalize(scenes.images), scenes.labels, classifier,
                             progress=False)
    assert res.baseline_acc > 0.5  # a trained model: well above chance (0.1)
    assert res.top(1)[0].delta_loss > 0  # removing the most important head hurts
    layer, head = res.top(1)[0][:2]
    loss, acc = loss_acc(zero_head_copy(clip, layer, head), normalize(scenes.images),
                         scenes.labels, classifier)
    assert abs(res.delta_loss[layer, head] - (loss - res.baseline_loss)) <= 1e-4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top", "-2"], "argument --top: must be at least 1, got -2"),
        (["--top", "0"], "argument --top: must be at least 1, got 0"),
        (["--n-images", "0"], "argument --n-images: must be at least 1, got 0"),
        (["--batch-size", "-1"], "argument --batch-size: must be at least 1, got -1"),
        (["--layers", "-1"], "argument --layers: must be 0 or more, got -1"),
        (["--seed", "-1"], "argument --seed: must be 0 or more, got -1"),
        (["--top", "ten"], "argument --top: expected a whole number, got 'ten'"),
    ],
)
def test_cli_bad_numbers_are_usage_errors(args, message, capsys) -> None:
    """Refused by argparse (usage line, exit 2) before any model is loaded."""
    from msae_plugin.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["ablate-heads", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_output_under_a_file_fails_before_work(tmp_path, capsys, monkeypatch) -> None:
    import msae_plugin.vision.hooked_clip as hc
    from msae_plugin.cli import main

    def no_model(*a, **k):  # the model must not even be loaded
        raise AssertionError("model loaded before the output folder was checked")

    monkeypatch.setattr(hc.HookedOpenCLIP, "from_pretrained", no_model)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["ablate-heads", "--out", str(blocker / "heads"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--out {blocker / 'heads'} cannot be created: {blocker} is a file" in err
    assert main(["ablate-heads", "--out", str(blocker), "--no-progress"]) == 2
    assert f"--out {blocker} is a file, not a folder" in capsys.readouterr().err
    assert main(["ablate-heads", "--device", "nonsense", "--out", str(tmp_path / "o")]) == 2
    assert "--device 'nonsense' is not a torch device name" in capsys.readouterr().err
    (tmp_path / "o2" / "heads_mean.png").mkdir(parents=True)
    assert main(["ablate-heads", "--mode", "mean", "--out", str(tmp_path / "o2")]) == 2
    assert "heads_mean.png is a folder, but the command writes a file" in capsys.readouterr().err


def test_cli_warns_when_an_openclip_model_has_no_pretrained_weights(tmp_path, capsys,
                                                                     monkeypatch) -> None:
    """open_clip gives random weights without a tag: say so before a long scan of noise."""
    import msae_plugin.vision.hooked_clip as hc
    from msae_plugin.cli import main

    class _Stop(Exception):
        pass

    def stop(*a, **k):
        raise _Stop()

    monkeypatch.setattr(hc.HookedOpenCLIP, "from_pretrained", stop)
    with pytest.raises(_Stop):
        main(["ablate-heads", "--model", "ViT-B-32", "--out", str(tmp_path / "o")])
    assert "--model ViT-B-32 without --pretrained has random weights" in capsys.readouterr().err
    with pytest.raises(_Stop):
        main(["ablate-heads", "--out", str(tmp_path / "o")])  # the embedded model: no warning
    assert "random weights" not in capsys.readouterr().err
