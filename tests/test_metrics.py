"""Metrics against independent reference computations."""

import itertools

import numpy as np
import pytest
import torch

from msae_plugin.metrics import cknna, evaluate_sae, flatten, hsic_unbiased
from msae_plugin.msae.training_sae import MSAETrainingSAE, MSAETrainingSAEConfig
from msae_plugin.plots import plot_sparsity_tradeoff


def hsic_u_statistic(K, L):
    """Unbiased HSIC straight from its U-statistic definition (Song et al. 2012, eq. 4)."""
    m = K.shape[0]
    total = 0.0
    count = 0
    for i, j, q, r in itertools.permutations(range(m), 4):
        total += (K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q])
        count += 1
    return total / count


def test_hsic_matches_u_statistic():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(7, 3))
    B = rng.normal(size=(7, 4))
    K, L = A @ A.T, B @ B.T
    ours = float(hsic_unbiased(torch.tensor(K), torch.tensor(L)))
    assert ours == pytest.approx(hsic_u_statistic(K, L), rel=1e-9)


def test_cknna_properties():
    A = torch.randn(60, 5)
    assert cknna(A, A, topk=10) == pytest.approx(1.0, abs=1e-4)
    assert cknna(A, 3.0 * A, topk=10) == pytest.approx(1.0, abs=1e-4)
    # full neighbourhood = unbiased linear CKA, computed independently
    K, L = A @ A.T, torch.randn(60, 5) @ torch.randn(5, 60)
    B = torch.randn(60, 4)
    L = B @ B.T
    cka = hsic_unbiased(K.double(), L.double()) / torch.sqrt(
        hsic_unbiased(K.double(), K.double()) * hsic_unbiased(L.double(), L.double())
    )
    assert cknna(A, B, topk=59) == pytest.approx(float(cka), abs=1e-4)
    with pytest.raises(ValueError, match="topk"):
        cknna(A, B, topk=60)


def test_evaluate_sae_matches_numpy(tmp_path):
    sae = MSAETrainingSAE(MSAETrainingSAEConfig(d_in=6, d_sae=24, k_start=3))
    with torch.no_grad():
        sae.input_mean.normal_()
        sae.input_scale.fill_(0.7)
        sae.b_enc.normal_()
    x = torch.randn(300, 6)
    res = evaluate_sae(sae, x, batch_size=64, cknna_samples=100)
    xn = x.numpy().astype(np.float64)
    for k in (3, 6, None):
        z = sae.encode(x, k=k).detach()
        xh = sae.decode(z).detach().numpy().astype(np.float64)
        name = "relu" if k is None else f"k={k}"
        fvu = np.mean(np.var(xn - xh, axis=1) / np.var(xn, axis=1))
        cos = np.mean((xn * xh).sum(1) / np.linalg.norm(xn, axis=1) / np.linalg.norm(xh, axis=1))
        zn = z.numpy()
        assert res[name]["reconstruction_quality"]["fvu"] == pytest.approx(fvu, rel=1e-4)
        assert res[name]["reconstruction_quality"]["cossim"] == pytest.approx(cos, rel=1e-4)
        assert res[name]["sparsity"]["l0"] == pytest.approx((zn != 0).sum(1).mean(), rel=1e-6)
        assert res[name]["sparsity"]["frac_zero"] == pytest.approx((zn == 0).mean(), rel=1e-6)
        assert res[name]["sparsity"]["dead_fraction"] == pytest.approx(
            (~(zn != 0).any(0)).mean()
        )
    assert "alignment/cknna_relu" in flatten(res)
    png = plot_sparsity_tradeoff({"m": res}, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_rejects_empty():
    sae = MSAETrainingSAE(MSAETrainingSAEConfig(d_in=6, d_sae=24, k_start=3))
    with pytest.raises(ValueError, match="no activations"):
        evaluate_sae(sae, iter([]))
