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
    html = tmp_path / "view.html"
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
    rc = main(["inversionview", "--activation", str(tmp_path / "q.pt"), "--decoder-dir",
               str(decoder_dir), "--site", "blocks.1.hook_resid_post", "--n", "4"])
    assert rc == 0 and "raw activation from" in capsys.readouterr().out


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
