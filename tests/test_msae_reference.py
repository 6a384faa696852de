"""Checkpoints of the MSAE paper's reference code, loaded and converted as the plugin's ``msae``.

The reference forward is written here from the brief's equations (research/msae.md §1.1, §1.4,
§2.1) in plain torch, independently of the package: x' = (x − μ)·s, z_pre = (x' − pre_bias) @
encoder + latent_bias, z = ReLU(z_pre) or its top-k, x̂ = (z @ decoder + pre_bias)/s + μ.
"""

from __future__ import annotations

import json

import pytest
import torch

from msae_plugin.cli import main
from msae_plugin.errors import CheckpointError, OutputPathError, UnsafeCheckpointError
from msae_plugin.msae.reference import (
    convert_reference_checkpoint,
    load_reference_checkpoint,
)

D, N = 12, 40  # d != n, so a transposed matrix cannot slip through with the right shape
KS = (1, 3, 8, 17, N)


def _reference_checkpoint(seed: int = 0, d: int = D, n: int = N, tied: bool = False) -> dict:
    """What the reference train.py saves: the state dict next to μ, s and the target norm."""
    g = torch.Generator().manual_seed(seed)
    decoder = torch.randn(n, d, generator=g)
    decoder = decoder / decoder.norm(dim=-1, keepdim=True)  # kept at unit norm by training
    # untied (not decoder.T); stored as the reference does: the transpose of an [n, d] tensor
    encoder = (torch.randn(n, d, generator=g) * 0.4).t()
    if tied:
        encoder = decoder.T.clone()
    model = {
        "pre_bias": torch.randn(d, generator=g) * 0.3,
        "encoder": encoder,
        "latent_bias": torch.randn(n, generator=g) * 0.2,
        "latents_activation_frequency": torch.randint(0, 50, (n,), generator=g),
    }
    if not tied:
        model["decoder"] = decoder
    return {
        "model": model,
        "mean_center": torch.randn(d, generator=g) * 3.0 + 1.5,
        "scaling_factor": 0.37,
        "target_norm": float(d) ** 0.5,
    }


def _save(ckpt: dict, tmp_path, name: str = "ref.pth"):
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def _reference_forward(ckpt: dict, x: torch.Tensor, k: int | None = None):
    sd = ckpt["model"]
    mu, s = ckpt["mean_center"], ckpt["scaling_factor"]
    decoder = sd["decoder"] if "decoder" in sd else sd["encoder"].T
    x_std = (x - mu) * s
    z = torch.relu((x_std - sd["pre_bias"]) @ sd["encoder"] + sd["latent_bias"])
    if k is not None:
        values, idx = torch.topk(z, k, dim=-1)
        z = torch.zeros_like(z).scatter(-1, idx, values)
    x_hat = (z @ decoder + sd["pre_bias"]) / s + mu
    return z, x_hat


def _inputs(ckpt: dict, rows: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return ckpt["mean_center"] + torch.randn(rows, D, generator=g) * 4.0


def _assert_matches(sae, ckpt: dict, x: torch.Tensor) -> None:
    for k in (None, *KS):
        z_ref, x_ref = _reference_forward(ckpt, x, k)
        z = sae.encode(x, k=k)
        assert torch.equal(z != 0, z_ref != 0), f"k={k}: other latents selected"
        torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(z), x_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("flat", [False, True], ids=["nested-model", "flat-state-dict"])
def test_loaded_msae_matches_reference_forward(tmp_path, flat):
    ckpt = _reference_checkpoint()
    stored = ckpt
    if flat:  # the state dict's tensors at the top level, next to the statistics
        stored = {**ckpt["model"], **{k: v for k, v in ckpt.items() if k != "model"}}
    sae = load_reference_checkpoint(_save(stored, tmp_path), k_levels=[4, 8, 16])
    x = _inputs(ckpt)
    _assert_matches(sae, ckpt, x)
    assert sae.cfg.ladder == (4, 8, 16, N)
    # the codes are sparse and non-trivial at the ReLU path, so the comparison has teeth
    z = sae.encode(x)
    assert 0 < float((z != 0).float().mean()) < 1


def test_tied_checkpoint_uses_the_encoder_transpose(tmp_path):
    ckpt = _reference_checkpoint(tied=True)
    path = _save(ckpt, tmp_path)
    sae = load_reference_checkpoint(path, tied=True)
    _assert_matches(sae, ckpt, _inputs(ckpt))
    with pytest.raises(CheckpointError, match=r"lacks \['decoder'\].*tied=True \(--tied\)"):
        load_reference_checkpoint(path)


def test_converted_folder_loads_with_saelens_and_gives_the_same_numbers(tmp_path):
    from sae_lens import SAE

    from msae_plugin.msae.sae import MSAE

    ckpt = _reference_checkpoint(seed=3)
    out = tmp_path / "converted"
    convert_reference_checkpoint(
        _save(ckpt, tmp_path), out, hook_name="blocks.5.hook_resid_post", model_name="tiny"
    )
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    sae = SAE.load_from_disk(out)
    assert isinstance(sae, MSAE)
    assert sae.cfg.metadata.hook_name == "blocks.5.hook_resid_post"
    assert sae.cfg.metadata.model_name == "tiny"
    assert sae.cfg.ladder == (N,)  # d_sae < 64: the paper's ladder reduces to the ReLU level
    _assert_matches(sae, ckpt, _inputs(ckpt))


def test_default_ladder_is_the_papers(tmp_path):
    ckpt = _reference_checkpoint(d=8, n=256)
    sae = load_reference_checkpoint(_save(ckpt, tmp_path))
    assert sae.cfg.ladder == (64, 128, 256)


def test_cli_convert_end_to_end(tmp_path, capsys):
    ckpt = _reference_checkpoint(seed=5)
    src, out = _save(ckpt, tmp_path), tmp_path / "out"
    rc = main(["convert", str(src), str(out), "--hook-name", "h.0", "--model-name", "m",
               "--k-levels", "4", "16"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"d_in={D} d_sae={N}" in captured.out and "[4, 16, 40]" in captured.out
    assert "s = 0.37" in captured.out
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "msae" and cfg["k_levels"] == [4, 16]
    from sae_lens import SAE

    _assert_matches(SAE.load_from_disk(out), ckpt, _inputs(ckpt))


def test_statistics_under_other_key_names(tmp_path, capsys):
    """The reference's load_model reads dataset_mean / dataset_target_norm: named by option."""
    ckpt = _reference_checkpoint(seed=7)
    stored = {"model": ckpt["model"], "dataset_mean": ckpt["mean_center"],
              "dataset_target_norm": torch.tensor(ckpt["scaling_factor"]),
              "dataset_normalize": True}
    path = _save(stored, tmp_path)
    with pytest.raises(CheckpointError, match=r"\['mean_center', 'scaling_factor'\] are missing"
                       r".*--mean-key dataset_mean --scale-key dataset_target_norm"):
        load_reference_checkpoint(path)
    sae = load_reference_checkpoint(path, mean_key="dataset_mean",
                                    scale_key="dataset_target_norm")
    _assert_matches(sae, ckpt, _inputs(ckpt))
    # and without any statistics: the identity standardisation
    bare = _reference_checkpoint(seed=8)
    bare.update(mean_center=torch.zeros(D), scaling_factor=1.0)
    rc = main(["convert", str(_save({"model": bare["model"]}, tmp_path, "bare.pt")),
               str(tmp_path / "bare"), "--mean-key", "none", "--scale-key", "none"])
    assert rc == 0, capsys.readouterr().err
    from sae_lens import SAE

    _assert_matches(SAE.load_from_disk(tmp_path / "bare"), bare, _inputs(bare))


def test_non_unit_decoder_rows_are_refused_unless_the_check_is_off(tmp_path):
    ckpt = _reference_checkpoint(seed=9)
    g = torch.Generator().manual_seed(1)
    ckpt["model"]["decoder"] = ckpt["model"]["decoder"] * (0.5 + torch.rand(N, 1, generator=g))
    path = _save(ckpt, tmp_path)
    with pytest.raises(CheckpointError, match=r"not unit-norm.*--decoder-norm-tol none"):
        load_reference_checkpoint(path)
    sae = load_reference_checkpoint(path, decoder_norm_tol=None)
    x = _inputs(ckpt)
    z_ref, x_ref = _reference_forward(ckpt, x)  # the ReLU path stays exact
    torch.testing.assert_close(sae.encode(x), z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.reconstruct(x), x_ref, rtol=1e-5, atol=1e-4)


def test_rows_within_the_tolerance_keep_the_references_topk(tmp_path):
    """The reference normalises rows before each optimiser step, so the saved ones are a step off
    unit norm; within the default tolerance the TopK selection is still the reference's."""
    ckpt = _reference_checkpoint(seed=11)
    g = torch.Generator().manual_seed(2)
    ckpt["model"]["decoder"] = ckpt["model"]["decoder"] * (1 + 4e-4 * torch.rand(N, 1, generator=g))
    sae = load_reference_checkpoint(_save(ckpt, tmp_path))
    _assert_matches(sae, ckpt, _inputs(ckpt))


def test_converting_into_a_used_folder_replaces_the_checkpoint_and_keeps_other_files(tmp_path):
    from sae_lens import SAE

    out = tmp_path / "out"
    convert_reference_checkpoint(_save(_reference_checkpoint(seed=1), tmp_path, "a.pt"), out)
    (out / "notes.txt").write_text("mine")
    second = _reference_checkpoint(seed=2, n=48)
    convert_reference_checkpoint(_save(second, tmp_path, "b.pt"), out)
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
    sae = SAE.load_from_disk(out)
    assert sae.cfg.d_sae == 48
    _assert_matches(sae, second, _inputs(second))


# ---- bad inputs ------------------------------------------------------------------------------
def test_missing_state_dict_keys_are_listed(tmp_path):
    ckpt = _reference_checkpoint()
    del ckpt["model"]["encoder"], ckpt["model"]["latent_bias"]
    with pytest.raises(CheckpointError, match=r"lacks \['encoder', 'latent_bias'\]"):
        load_reference_checkpoint(_save(ckpt, tmp_path))


def test_no_state_dict_at_all(tmp_path):
    with pytest.raises(CheckpointError, match="no model state dict.*found keys"):
        load_reference_checkpoint(_save({"weights": torch.zeros(3)}, tmp_path))
    with pytest.raises(CheckpointError, match="holds a Tensor, not the dict"):
        load_reference_checkpoint(_save(torch.zeros(3), tmp_path, "t.pt"))


@pytest.mark.parametrize("name, shape, pattern", [
    ("encoder", (N, D), r"'encoder' has shape \(40, 12\), expected \(12, 40\).*transposed"),
    ("decoder", (N, D + 1), r"'decoder' has shape \(40, 13\), expected \(40, 12\)"),
    ("pre_bias", (D, 1), "must be vectors"),
])
def test_wrong_shapes(tmp_path, name, shape, pattern):
    ckpt = _reference_checkpoint()
    ckpt["model"][name] = torch.randn(*shape)
    with pytest.raises(CheckpointError, match=pattern):
        load_reference_checkpoint(_save(ckpt, tmp_path))


def test_mean_of_the_wrong_width(tmp_path):
    ckpt = _reference_checkpoint()
    ckpt["mean_center"] = torch.zeros(D + 2)
    with pytest.raises(CheckpointError, match="'mean_center' has 14 values.*d=12"):
        load_reference_checkpoint(_save(ckpt, tmp_path))


@pytest.mark.parametrize("where", ["encoder", "mean_center"])
def test_non_finite_tensors(tmp_path, where):
    ckpt = _reference_checkpoint()
    target = ckpt["model"] if where == "encoder" else ckpt
    target[where] = target[where].contiguous().clone()
    target[where].view(-1)[[0, 5]] = torch.tensor([float("nan"), float("inf")])
    with pytest.raises(CheckpointError, match=f"'{where}' holds 2 NaN/inf value"):
        load_reference_checkpoint(_save(ckpt, tmp_path))


@pytest.mark.parametrize("value, pattern", [
    (0.0, "must be finite and > 0"),
    (float("nan"), "must be finite and > 0"),
    (torch.ones(2), r"must be one number.*shape \(2,\)"),
    ("0.5", "must be one number.*got str"),
])
def test_bad_scaling_factor(tmp_path, value, pattern):
    ckpt = _reference_checkpoint()
    ckpt["scaling_factor"] = value
    with pytest.raises(CheckpointError, match=pattern):
        load_reference_checkpoint(_save(ckpt, tmp_path))


def test_unknown_state_dict_entries(tmp_path):
    ckpt = _reference_checkpoint()
    ckpt["model"]["activation.log_threshold"] = torch.zeros(N)
    with pytest.raises(CheckpointError, match=r"unexpected entries \['activation.log_threshold'\]"):
        load_reference_checkpoint(_save(ckpt, tmp_path))


def test_tied_flag_with_a_decoder_present(tmp_path):
    with pytest.raises(CheckpointError, match="trained untied"):
        load_reference_checkpoint(_save(_reference_checkpoint(), tmp_path), tied=True)


def test_malicious_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    ckpt = _reference_checkpoint()
    ckpt["extra"] = Evil()
    path = _save(ckpt, tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="exec"):
        load_reference_checkpoint(path)
    rc = main(["convert", str(path), str(tmp_path / "out")])
    assert rc == 2
    assert not marker.exists()
    assert not (tmp_path / "out" / "cfg.json").exists()


def test_out_dir_under_a_file_is_refused_before_reading(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    src = _save({"not": "read"}, tmp_path)  # would fail differently if it were read first
    with pytest.raises(OutputPathError, match="a_file is a file, not a folder"):
        convert_reference_checkpoint(src, blocker / "out")
    rc = main(["convert", str(src), str(blocker / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "is a file, not a folder" in err


def test_missing_source_file(tmp_path, capsys):
    rc = main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "out")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="is a folder"):
        load_reference_checkpoint(tmp_path)


def test_truncated_file_is_a_checkpoint_error(tmp_path):
    path = _save(_reference_checkpoint(), tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot load the reference checkpoint"):
        load_reference_checkpoint(path)


def test_bad_decoder_norm_tol_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["convert", "a.pt", str(tmp_path), "--decoder-norm-tol", "-1"])
    assert exc.value.code == 2
    assert "expected a number >= 0 or 'none'" in capsys.readouterr().err
