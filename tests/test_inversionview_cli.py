"""``msae inversionview``: output, HTML page and every bad-input path, on the shipped addition
probed model with a freshly saved (untrained) decoder."""

from __future__ import annotations

import pytest
import torch

from msae_plugin.cli import main
from msae_plugin.inversionview import addition_decoder as AD
from msae_plugin.inversionview.checkpoint import save_decoder
from msae_plugin.inversionview.decoder import InversionViewDecoder
from msae_plugin.inversionview.releases import load_release


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dec")
    probed = AD.load_shipped_probed_model()
    torch.manual_seed(0)
    dec = InversionViewDecoder(AD.decoder_config(d_model=32))
    save_decoder(dec, path, list(AD.SITES), probed, probed_name=AD.PROBED_NAME)
    return path


def test_table_and_html(decoder_dir, tmp_path, capsys) -> None:
    html = tmp_path / "new" / "sub" / "view.html"  # missing folders are created
    rc = main(["inversionview", "123+456=579", "--decoder-dir", str(decoder_dir), "--site",
               "blocks.0.attn.hook_result.3", "--n", "8", "--html", str(html)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "query: B123+456=579E  (position 8)" in out
    assert "/8 samples inside the ε=0.1 preimage" in out
    page = html.read_text()
    assert 'class="tok query">=</span>' in page and page.count("<tr class=") == 8
    assert "rgba(" in page and "token colour" in page  # per-token contrast colouring


def test_raw_activation_input(decoder_dir, tmp_path, capsys) -> None:
    rel = load_release("addition", decoder_dir)
    from msae_plugin.inversionview.preimage import activations_at

    q = activations_at(rel.probed, torch.tensor([rel.encode("123+456=579")]),
                       "blocks.1.hook_resid_post")[0, 8]
    torch.save(q, tmp_path / "q.pt")
    html = tmp_path / "raw.html"
    rc = main(["inversionview", "--activation", str(tmp_path / "q.pt"), "--decoder-dir",
               str(decoder_dir), "--site", "blocks.1.hook_resid_post", "--n", "4",
               "--html", str(html)])
    out = capsys.readouterr().out
    assert rc == 0 and "raw activation from" in out
    # a raw vector has no position: "-1" would read as the input's last token
    assert "(no position: raw activation)" in out and "position -1" not in out
    page = html.read_text()
    assert "no position: raw activation" in page and "position -1" not in page


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["", "--n", "4"], "the input is empty"),
        (["123+456=579000"], "not a three-digit addition problem"),  # too long
        (["123+456=579", "--site", "blocks.0.hook_resid_pots"],
         "Did you mean 'blocks.0.hook_resid_post'"),
        (["123+456=579", "--epsilon", "0"], "epsilon must be > 0"),
        (["123+456=579", "--epsilon", "-0.5"], "epsilon must be > 0"),
        (["123+456=579", "--position", "13"], "outside the input (0..12)"),
        (["123+456=579", "--release", "additon"], "Did you mean 'addition'"),
        (["123+456=579", "--n", "0"], "--n must be ≥ 1"),
        (["--activation", "/nonexistent/q.pt"], "does not exist or is not a file"),
        ([], "give exactly one of INPUT or --activation"),
    ],
)
def test_bad_input(decoder_dir, capsys, args, message) -> None:
    rc = main(["inversionview", *args, "--decoder-dir", str(decoder_dir)])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_wrong_width_activation_and_other_probed_model(decoder_dir, tmp_path, capsys) -> None:
    torch.save(torch.ones(31), tmp_path / "q.pt")
    rc = main(["inversionview", "--activation", str(tmp_path / "q.pt"), "--decoder-dir",
               str(decoder_dir)])
    assert rc == 2 and "width 32" in capsys.readouterr().err
    # a decoder saved against another model is refused when loaded next to the shipped one
    other = AD.load_shipped_probed_model()
    with torch.no_grad():
        other.blocks[0].attn.W_Q.add_(0.01)
    torch.manual_seed(0)
    save_decoder(InversionViewDecoder(AD.decoder_config(d_model=32)), tmp_path / "other",
                 list(AD.SITES), other)
    rc = main(["inversionview", "123+456=579", "--decoder-dir", str(tmp_path / "other")])
    assert rc == 2 and "trained against a different probed model" in capsys.readouterr().err


class _Marker:
    """Unpickling this creates ``path``: a stand-in for arbitrary code in a crafted file."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _no_sampling(monkeypatch) -> None:
    """Fail the test if the command gets as far as sampling."""
    from msae_plugin.inversionview import sampling

    def boom(*args, **kwargs):
        raise AssertionError("the command sampled before refusing its input")

    monkeypatch.setattr(sampling, "sample_preimage", boom)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (torch.full((32,), float("nan")), "contains NaN or inf"),
        (torch.tensor([1.0] * 31 + [float("inf")]), "contains NaN or inf"),
        (torch.zeros(32), "is all zeros"),
        ({"not": "a tensor"}, "must hold one 1-D activation vector"),
    ],
)
def test_bad_raw_activation(decoder_dir, tmp_path, capsys, monkeypatch, content, message) -> None:
    _no_sampling(monkeypatch)
    torch.save(content, tmp_path / "q.pt")
    rc = main(["inversionview", "--activation", str(tmp_path / "q.pt"), "--decoder-dir",
               str(decoder_dir)])
    assert rc == 2 and message in capsys.readouterr().err


def test_crafted_activation_file_runs_no_code(decoder_dir, tmp_path, capsys) -> None:
    marker = tmp_path / "code_ran"
    torch.save({"q": _Marker(marker)}, tmp_path / "q.pt")
    rc = main(["inversionview", "--activation", str(tmp_path / "q.pt"), "--decoder-dir",
               str(decoder_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and "refusing to load --activation" in err and "could run arbitrary code" in err
    assert not marker.exists()


def test_html_path_is_checked_before_any_work(decoder_dir, tmp_path, capsys, monkeypatch) -> None:
    _no_sampling(monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = main(["inversionview", "123+456=579", "--decoder-dir", str(decoder_dir), "--html",
               str(blocker / "sub" / "view.html")])
    captured = capsys.readouterr()
    assert rc == 2 and f"{blocker} is a file, not a folder" in captured.err
    assert captured.out == ""  # nothing was computed or printed
    rc = main(["inversionview", "123+456=579", "--decoder-dir", str(decoder_dir), "--html",
               str(tmp_path)])
    assert rc == 2 and "is a folder; give a file name" in capsys.readouterr().err


def test_warns_on_positions_the_decoder_never_saw(tmp_path, capsys) -> None:
    """A decoder trained on '+', '=', A1-A3 only (all_positions false, as the shipped one) warns
    when queried at an operand digit; a decoder without that record does not."""
    probed = AD.load_shipped_probed_model()
    torch.manual_seed(0)
    save_decoder(InversionViewDecoder(AD.decoder_config(d_model=32)), tmp_path / "d",
                 list(AD.SITES), probed, extra={"training": {"all_positions": False}})
    args = ["inversionview", "123+456=579", "--decoder-dir", str(tmp_path / "d"), "--n", "2"]
    assert main([*args, "--position", "2"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "position 2 was never a training query" in err
    assert "[0, 4, 8, 9, 10, 11]" in err
    for pos in ("8", "10"):
        assert main([*args, "--position", pos]) == 0
        assert "warning" not in capsys.readouterr().err


def test_shipped_release_knows_its_training_positions() -> None:
    import json

    meta = json.loads((AD.data_dir() / "addition_decoder" / "decoder_cfg.json").read_text())
    assert meta["training"]["all_positions"] is False  # trained on the paper's positions only
    assert load_release("addition").positions == (0, 4, 8, 9, 10, 11)  # BOS, +, =, A1, A2, A3
