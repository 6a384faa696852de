"""MSAE folds against the unfolded SAE, written out from the definitions of each fold.

A fold of an input map T (with inverse T⁻¹) into an SAE trained on T(x) must give, on raw x, the
codes the unfolded SAE gives on T(x) and the outputs T⁻¹(unfolded output). The MSAE carries its
own statistics (input_mean μ, input_scale s), which the inherited SAELens folds ignored. A fold
that cannot be exact for every k must be refused (FoldNotSupportedError).
"""

from __future__ import annotations

import copy

import pytest
import torch
from sae_lens.training.activation_scaler import ActivationScaler

from msae_plugin.errors import FoldNotSupportedError, MSAEConfigError
from msae_plugin.msae.config import MSAEConfig, MSAETrainingSAEConfig
from msae_plugin.msae.sae import MSAE
from msae_plugin.msae.training_sae import MSAETrainingSAE

D_IN, D_SAE = 12, 48
KS = [None, 1, 6, 20, D_SAE]


def make_msae(apply_b_dec_to_input: bool = True) -> MSAE:
    """A float64 MSAE with signed weights, a non-trivial mean and a scale far from 1."""
    sae = MSAE(MSAEConfig(d_in=D_IN, d_sae=D_SAE, k_start=4, dtype="float64",
                          apply_b_dec_to_input=apply_b_dec_to_input))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        sae.input_mean.copy_(torch.randn(D_IN, generator=g, dtype=torch.float64) * 4)
        sae.input_scale.fill_(0.37)
    return sae


def raw_x(n: int = 30) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.randn(n, D_IN, generator=g, dtype=torch.float64) * 5 + 2


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
@pytest.mark.parametrize("k", KS)
@torch.no_grad()
def test_fold_norm_scaling_factor_equals_unfolded_on_scaled_inputs(apply_b_dec_to_input, k):
    """SAELens's contract (SAETrainer, ActivationScaler): trained on c·x, outputs unscaled by
    ÷c. After folding, the SAE fed raw x gives the same codes and that unscaled output."""
    c = 2.75
    sae = make_msae(apply_b_dec_to_input)
    folded = copy.deepcopy(sae)
    folded.fold_activation_norm_scaling_factor(c)
    x = raw_x()
    scaler = ActivationScaler(scaling_factor=c)  # what SAETrainer trained the SAE through
    ref_codes = sae.encode(scaler.scale(x), k=k)
    ref_out = scaler.unscale(sae.decode(ref_codes))
    assert torch.allclose(ref_out, sae.decode(ref_codes) / c)  # the semantics, spelled out
    codes = folded.encode(x, k=k)
    close(codes, ref_codes)
    close(folded.decode(codes), ref_out)
    assert (ref_codes != 0).any()
    assert folded.cfg.normalize_activations == "none"


@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan"), float("inf")])
def test_fold_norm_scaling_factor_refuses_non_positive_or_non_finite(bad):
    sae = make_msae()
    before = {n: t.clone() for n, t in sae.state_dict().items()}
    with pytest.raises(MSAEConfigError, match="finite number > 0"):
        sae.fold_activation_norm_scaling_factor(bad)
    for n, t in sae.state_dict().items():
        assert torch.equal(t, before[n]), n  # untouched


def test_fold_whitening_is_refused_clearly_and_changes_nothing():
    """The inherited SAELens fold ignored μ and s (outputs off by several units); an exact fold
    cannot keep TopK's selection, so MSAE refuses it and says what to do instead."""
    sae = make_msae()
    before = {n: t.clone() for n, t in sae.state_dict().items()}
    eye = torch.eye(D_IN, dtype=torch.float64)
    with pytest.raises(FoldNotSupportedError, match=r"Whiten the activations before") as info:
        sae.fold_activation_whitening(torch.zeros(D_IN, dtype=torch.float64), 2 * eye, eye / 2)
    assert isinstance(info.value, NotImplementedError)  # what SAELens's callers catch
    assert isinstance(info.value, MSAEConfigError)
    for n, t in sae.state_dict().items():
        assert torch.equal(t, before[n]), n


@pytest.mark.parametrize("k", KS)
@torch.no_grad()
def test_fold_W_dec_norm_exact_for_every_k(k):
    """Decoder norms 0.1–10: codes scale by ‖W_dec_j‖, outputs unchanged, at every k."""
    sae = make_msae()
    sae.W_dec.data *= torch.logspace(-1, 1, D_SAE, dtype=torch.float64)[torch.randperm(D_SAE),
                                                                         None]
    norms = sae.W_dec.norm(dim=-1)
    folded = copy.deepcopy(sae)
    folded.fold_W_dec_norm()
    x = raw_x()
    ref = sae.encode(x, k=k)
    codes = folded.encode(x, k=k)
    close(folded.W_dec.norm(dim=-1), torch.ones(D_SAE, dtype=torch.float64))
    close(codes, ref * norms)
    close(folded.decode(codes), sae.decode(ref))
    assert (ref != 0).sum(-1).min() >= min(k or D_SAE, 3)


@torch.no_grad()
def test_training_renormalisation_keeps_function_at_every_k():
    """The training step's decoder renormalisation is the same fold, so it must not change
    what the SAE computes at any k."""
    sae = MSAETrainingSAE(MSAETrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k_start=4,
                                                dtype="float64"))
    x = raw_x(64)
    sae.fit_input_statistics(x)
    sae.W_dec.data *= torch.logspace(-1, 1, D_SAE, dtype=torch.float64)[:, None]
    ref = {k: sae.decode(sae.encode(x, k=k)) for k in KS}
    sae._renormalize_decoder()
    close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE, dtype=torch.float64))
    for k in KS:
        close(sae.decode(sae.encode(x, k=k)), ref[k])
