"""SAELens's architecture-generic SAE checks, re-stated for ``msae`` next to two built-ins.

SAELens's own test suite (tests/saes/test_sae.py upstream) runs these checks over every
registered architecture: config dict round trips, save/load, folding the activation-norm scaling
factor, the decoder norms and a whitening transform, encode/decode shapes with extra leading
dimensions, and the training forward pass. They are written here in our own words, against
SAELens's public API only, so a plugin architecture is held to the same contract as SAELens's.
Reference values always come from the *unfolded* copy of the SAE (the definition of a fold).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import SAE
from sae_lens.registry import get_sae_class, get_sae_training_class
from sae_lens.saes.sae import SAEConfig, TrainingSAE, TrainingSAEConfig, TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

from msae_plugin.msae.config import MSAETrainingSAEConfig

ARCHS = ["msae", "standard", "topk"]
D_IN, D_SAE = 16, 64


def training_cfg(arch: str, **kw: Any) -> TrainingSAEConfig:
    base: dict[str, Any] = {"d_in": D_IN, "d_sae": D_SAE, **kw}
    if arch == "msae":
        return MSAETrainingSAEConfig(k_start=4, **base)
    if arch == "standard":
        return StandardTrainingSAEConfig(**base)
    if arch == "topk":
        return TopKTrainingSAEConfig(k=8, **base)
    raise AssertionError(arch)


def inference_sae(arch: str, **kw: Any) -> SAE:
    cfg = SAEConfig.from_dict(training_cfg(arch, **kw).get_inference_sae_cfg_dict())
    return SAE.from_dict(cfg.to_dict())


def randomize(module: torch.nn.Module) -> None:
    """Every parameter and buffer uniform in (0, 1): nothing zero, no unit-norm decoder rows."""
    with torch.no_grad():
        for p in module.parameters():
            p.data = torch.rand_like(p)
        for b in module.buffers():
            b.data = torch.rand_like(b)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# ---- configs ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_training_config_dict_round_trip(arch):
    cfg = training_cfg(arch)
    again = TrainingSAEConfig.from_dict(cfg.to_dict())
    assert type(again) is type(cfg) is get_sae_training_class(arch)[1]
    assert again.to_dict() == cfg.to_dict()
    assert cfg.to_dict()["metadata"]["training_architecture"] == arch


@pytest.mark.parametrize("arch", ARCHS)
def test_inference_config_from_training_config(arch):
    cfg_dict = training_cfg(arch).get_inference_sae_cfg_dict()
    cfg = SAEConfig.from_dict(cfg_dict)
    assert cfg.architecture() == arch
    assert type(cfg) is get_sae_class(arch)[1]
    assert cfg.to_dict() == cfg_dict


# ---- save / load --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_training_sae_save_then_load_weights(arch, tmp_path: Path):
    cfg = training_cfg(arch)
    sae = TrainingSAE.from_dict(cfg.to_dict())
    randomize(sae)
    sae.save_model(tmp_path)
    again = TrainingSAE.from_dict(cfg.to_dict())
    again.load_weights_from_checkpoint(tmp_path)
    for (n1, t1), (n2, t2) in zip(
        sae.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert n1 == n2
        assert torch.equal(t1, t2), n1


@pytest.mark.parametrize("arch", ARCHS)
def test_inference_sae_save_load_from_disk(arch, tmp_path: Path):
    sae = inference_sae(arch)
    randomize(sae)
    sae.save_model(tmp_path)
    again = SAE.load_from_disk(tmp_path)
    assert type(again) is type(sae)
    assert again.cfg.to_dict() == sae.cfg.to_dict()
    x = torch.randn(6, D_IN)
    assert torch.equal(again(x), sae(x))


@pytest.mark.parametrize("arch", ["msae", "standard"])
def test_load_from_disk_fold_flag_equals_fold_after_loading(arch, tmp_path: Path):
    sae = inference_sae(arch)
    randomize(sae)
    sae.save_model(tmp_path)
    folded_on_load = SAE.load_from_disk(tmp_path, fold_W_dec_norm=True)
    folded_after = SAE.load_from_disk(tmp_path)
    folded_after.fold_W_dec_norm()
    for (n, a), (_, b) in zip(
        folded_on_load.state_dict().items(), folded_after.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), n


# ---- shapes and the training step ---------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("lead", [(5,), (3, 4), (2, 1, 3)])
def test_encode_decode_shapes_with_leading_dims(arch, lead):
    sae = inference_sae(arch)
    x = torch.randn(*lead, D_IN)
    z = sae.encode(x)
    assert z.shape == (*lead, D_SAE)
    assert sae.decode(z).shape == (*lead, D_IN)
    assert sae(x).shape == (*lead, D_IN)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_forward_pass_contract(arch):
    sae = TrainingSAE.from_dict(training_cfg(arch).to_dict())
    x = torch.randn(32, D_IN) + 1.0
    out = sae.training_forward_pass(
        TrainStepInput(sae_in=x, coefficients={"l1": 1.0} if arch == "standard" else {},
                       dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)
    )
    assert out.sae_out.shape == x.shape
    assert out.feature_acts.shape == out.hidden_pre.shape == (32, D_SAE)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert sae.W_enc.grad is not None and torch.isfinite(sae.W_enc.grad).all()


# ---- folding ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_training_sae_fold_activation_norm_scaling_factor(arch):
    """Trained on 2·x: after folding, SAE(x)·2 must equal the unfolded SAE(2·x)."""
    sae = TrainingSAE.from_dict(training_cfg(arch).to_dict())
    randomize(sae)
    x = torch.randn(100, D_IN)
    ref_out, ref_feats = sae(x), sae.encode(x)
    sae.fold_activation_norm_scaling_factor(2.0)
    assert sae.cfg.normalize_activations == "none"
    close(2.0 * sae(x / 2.0), ref_out)
    # SAELens's TopK (rescale_acts_by_decoder_norm) reports codes in unit-decoder units
    expected = ref_feats / 2.0 if arch == "topk" else ref_feats
    close(sae.encode(x / 2.0), expected)


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_inference_sae_fold_activation_norm_scaling_factor(arch):
    sae = inference_sae(arch)
    randomize(sae)
    folded = copy.deepcopy(sae)
    folded.fold_activation_norm_scaling_factor(3.0)
    scaled = torch.randn(10, 4, D_IN)  # what the SAE was trained on
    feats = sae.encode(scaled)
    feats_folded = folded.encode(scaled / 3.0)
    assert torch.equal(feats.nonzero(), feats_folded.nonzero())
    # SAELens's TopK (rescale_acts_by_decoder_norm) reports codes in unit-decoder units
    close(feats_folded, feats / 3.0 if arch == "topk" else feats)
    close(3.0 * folded.decode(feats_folded), sae.decode(feats))


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_inference_sae_fold_W_dec_norm(arch):
    sae = inference_sae(arch)
    randomize(sae)
    assert (sae.W_dec.norm(dim=-1) - 1).abs().max() > 0.1
    folded = copy.deepcopy(sae)
    folded.fold_W_dec_norm()
    close(folded.W_dec.norm(dim=-1), torch.ones(D_SAE))
    x = torch.randn(10, 4, D_IN)
    f1, f2 = sae.encode(x), folded.encode(x)
    assert torch.equal(f1.nonzero(), f2.nonzero())
    # SAELens's TopK (rescale_acts_by_decoder_norm) already reports unit-decoder codes
    close(f2, f1 if arch == "topk" else f1 * sae.W_dec.norm(dim=-1))
    close(folded.decode(f2), sae.decode(f1))


@torch.no_grad()
def test_saelens_topk_without_decoder_rescaling_refuses_fold_W_dec_norm():
    """The contract msae is held to: exact, or refused with NotImplementedError (as here)."""
    sae = inference_sae("topk", rescale_acts_by_decoder_norm=False)
    randomize(sae)
    with pytest.raises(NotImplementedError):
        sae.fold_W_dec_norm()


@pytest.mark.parametrize("k", [1, 5, 17, D_SAE])
@torch.no_grad()
def test_msae_fold_W_dec_norm_exact_at_every_k(k):
    """MSAE's encode takes any k at call time, so the fold must hold for TopK too."""
    sae = inference_sae("msae", dtype="float64")
    randomize(sae)  # buffers: a non-trivial mean and scale
    for p in sae.parameters():  # signed weights, so pre-activations of both signs
        p.data = torch.randn_like(p)
    sae.W_dec.data *= torch.logspace(-1, 1, D_SAE)[torch.randperm(D_SAE), None]  # norms 0.1–10
    folded = copy.deepcopy(sae)
    folded.fold_W_dec_norm()
    x = torch.randn(40, D_IN, dtype=torch.float64)
    f1, f2 = sae.encode(x, k=k), folded.encode(x, k=k)
    assert (f1 != 0).sum(-1).min() >= min(k, 3)  # not vacuous: latents are active
    assert torch.equal(f1.nonzero(), f2.nonzero())
    close(f2, f1 * sae.W_dec.norm(dim=-1))
    close(folded.decode(f2), sae.decode(f1))


@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()
def test_training_sae_fold_W_dec_norm(arch):
    sae = TrainingSAE.from_dict(training_cfg(arch).to_dict())
    randomize(sae)
    folded = copy.deepcopy(sae)
    folded.fold_W_dec_norm()
    close(folded.W_dec.norm(dim=-1), torch.ones(D_SAE))
    x = torch.randn(10, 4, D_IN)
    f1, f2 = sae.encode(x), folded.encode(x)
    assert torch.equal(f1.nonzero(), f2.nonzero())
    # SAELens's training TopK rescales by decoder norms itself, so its codes do not change
    expected = f1 if arch == "topk" else f1 * sae.W_dec.norm(dim=-1)
    close(f2, expected)
    close(folded.decode(f2), sae.decode(f1))


@pytest.mark.parametrize("arch", ["msae", "standard"])
@torch.no_grad()
def test_fold_W_dec_norm_with_zero_decoder_rows_stays_finite(arch):
    sae = inference_sae(arch)
    randomize(sae)
    sae.W_dec.data[:5] = 0.0
    sae.fold_W_dec_norm()
    for name, t in sae.state_dict().items():
        assert torch.isfinite(t).all(), name


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
@torch.no_grad()
def test_fold_activation_whitening(arch, apply_b_dec_to_input):
    """Trained on z = (x − m)·M with outputs mapped back by ·M⁻¹ + m: folding must make the
    SAE on raw x give the same codes and the mapped-back outputs, or refuse (msae: its TopK
    ranks by decoder contribution in the whitened space) with SAELens's NotImplementedError."""
    sae = inference_sae(arch, apply_b_dec_to_input=apply_b_dec_to_input, dtype="float64")
    randomize(sae)
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=g, dtype=torch.float64))
    M = q * (torch.rand(D_IN, generator=g, dtype=torch.float64) + 0.5)  # well conditioned
    M_inv = torch.linalg.inv(M)
    m = torch.randn(D_IN, generator=g, dtype=torch.float64) * 2
    if arch == "msae":
        before = {n: t.clone() for n, t in sae.state_dict().items()}
        with pytest.raises(NotImplementedError, match="whiten"):
            sae.fold_activation_whitening(m, M, M_inv)
        for n, t in sae.state_dict().items():
            assert torch.equal(t, before[n]), n  # refused without touching anything
        return
    x = torch.randn(12, D_IN, generator=g, dtype=torch.float64) * 3 + 1
    z = (x - m) @ M
    ref_feats = sae.encode(z)
    ref_out = sae.decode(ref_feats) @ M_inv + m
    sae.fold_activation_whitening(m, M, M_inv)
    feats = sae.encode(x)
    close(feats, ref_feats, atol=1e-9, rtol=1e-9)
    close(sae.decode(feats), ref_out, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("arch", ["msae", "standard"])
@torch.no_grad()
def test_fold_W_dec_norm_with_a_single_latent(arch):
    kw: dict[str, Any] = {"d_sae": 1}
    cfg = training_cfg(arch).to_dict() | kw
    if arch == "msae":
        cfg["k_start"] = 1
    sae = SAE.from_dict(SAEConfig.from_dict(TrainingSAEConfig.from_dict(cfg)
                                            .get_inference_sae_cfg_dict()).to_dict())
    randomize(sae)
    x = 10.0 * torch.ones(8, D_IN)
    before = sae(x)
    shapes = {n: p.shape for n, p in sae.named_parameters()}
    sae.fold_W_dec_norm()
    close(sae.W_dec.norm(dim=-1), torch.ones(1))
    assert {n: p.shape for n, p in sae.named_parameters()} == shapes
    close(sae(x), before, atol=1e-4)
