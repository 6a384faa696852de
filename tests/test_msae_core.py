"""The MSAE algorithm against independent reference computations."""

import pytest
import torch
import torch.nn.functional as F
from sae_lens import SAE
from sae_lens.config import SAETrainerConfig
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainStepInput
from sae_lens.training.sae_trainer import SAETrainer

from msae_plugin.msae.config import MSAEConfig, MSAETrainingSAEConfig
from msae_plugin.msae.ladder import build_ladder, level_weights
from msae_plugin.msae.nested import nested_decodes, topk_relu
from msae_plugin.msae.sae import MSAE
from msae_plugin.msae.training_sae import MSAETrainingSAE


def step_input(x):
    return TrainStepInput(
        sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0,
        is_logging_step=False,
    )


def test_registered_in_both_saelens_registries():
    assert SAE_CLASS_REGISTRY["msae"] == (MSAE, MSAEConfig)
    assert SAE_TRAINING_CLASS_REGISTRY["msae"] == (MSAETrainingSAE, MSAETrainingSAEConfig)


def test_paper_ladders():
    # the paper's table (brief §1.2): ViT-L/14 ×8 and ViT-B/16 ×16
    assert build_ladder(6144) == (64, 128, 256, 512, 1024, 2048, 4096, 6144)
    assert build_ladder(8192) == (64, 128, 256, 512, 1024, 2048, 4096, 8192)
    assert build_ladder(100, k_start=5, k_factor=3) == (5, 15, 45, 100)
    assert build_ladder(64, k_levels=[3, 10]) == (3, 10, 64)
    assert level_weights(8, "RW") == (8, 7, 6, 5, 4, 3, 2, 1)
    assert level_weights(3, "UW") == (1, 1, 1)


def reference_levels(hp, W, ladder):
    outs = []
    for k in ladder:
        v, i = hp.topk(k, dim=-1)
        outs.append(torch.zeros_like(hp).scatter(-1, i, F.relu(v)) @ W)
    return torch.stack(outs)


@pytest.mark.parametrize("shift", [0.0, 1.0, -3.0])
def test_nested_decodes_match_per_level_topk_values_and_gradients(shift):
    hp = (torch.randn(7, 48, dtype=torch.double) + shift).requires_grad_()
    W = torch.randn(48, 5, dtype=torch.double, requires_grad=True)
    ladder = [2, 4, 8, 16, 32, 48]
    ours = torch.stack(nested_decodes(hp, F.relu(hp), W, ladder))
    ref = reference_levels(hp, W, ladder)
    assert torch.allclose(ours, ref)
    g = torch.randn_like(ref)
    ga = torch.autograd.grad((ours * g).sum(), (hp, W))
    gb = torch.autograd.grad((ref * g).sum(), (hp, W))
    for a, b in zip(ga, gb, strict=True):
        assert torch.allclose(a, b)


def _mixed_rows(n_rows: int, d_sae: int, dtype=torch.double) -> torch.Tensor:
    """Rows whose number of positive pre-activations runs from 0 to d_sae, so every row takes a
    different split between head-read and tail-read levels (and some rows have none)."""
    hp = torch.randn(n_rows, d_sae, dtype=dtype)
    shifts = torch.linspace(-6.0, 6.0, n_rows, dtype=dtype)
    return hp + shifts[:, None]


def test_nested_decodes_rows_with_any_number_of_positives():
    hp = _mixed_rows(40, 48).requires_grad_()
    n_pos = (hp > 0).sum(-1)
    assert int(n_pos.min()) == 0 and int(n_pos.max()) == 48  # the test covers both extremes
    W = torch.randn(48, 6, dtype=torch.double, requires_grad=True)
    ladder = [2, 4, 8, 16, 32, 48]
    ours = torch.stack(nested_decodes(hp, F.relu(hp), W, ladder))
    ref = reference_levels(hp, W, ladder)
    assert torch.allclose(ours, ref, atol=1e-10)
    g = torch.randn_like(ref)
    ga = torch.autograd.grad((ours * g).sum(), (hp, W))
    gb = torch.autograd.grad((ref * g).sum(), (hp, W))
    for a, b in zip(ga, gb, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_nested_decodes_all_negative_rows_are_zero_at_every_level():
    hp = -torch.rand(5, 16, dtype=torch.double) - 0.1
    W = torch.randn(16, 3, dtype=torch.double)
    for out in nested_decodes(hp, F.relu(hp), W, [2, 4, 16]):
        assert torch.equal(out, torch.zeros(5, 3, dtype=torch.double))


def test_nested_decodes_float32_at_training_scale_match_reference():
    torch.manual_seed(3)
    hp = _mixed_rows(64, 1024, torch.float32).requires_grad_()
    W = (torch.randn(1024, 32) / 32**0.5).requires_grad_()
    ladder = [16, 32, 64, 128, 256, 512, 1024]
    ours = torch.stack(nested_decodes(hp, F.relu(hp), W, ladder))
    ref = reference_levels(hp.double(), W.double(), ladder)
    scale = ref.detach().abs().amax(-1, keepdim=True).clamp_min(1.0)
    # tails subtract from the dense output: the error is rounding of the dense output's size
    assert float(((ours.detach().double() - ref.detach()) / scale).abs().max()) < 1e-4


def test_nested_backward_passes_gradcheck_on_mixed_rows():
    hp = _mixed_rows(7, 12).requires_grad_()
    n_pos = (hp > 0).sum(-1)
    assert int(n_pos.min()) == 0 and int(n_pos.max()) == 12
    W = torch.randn(12, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda h, w: torch.stack(nested_decodes(h, F.relu(h), w, [2, 4, 8, 12])), (hp, W)
    )


def test_nested_backward_passes_gradcheck():
    hp = torch.randn(4, 20, dtype=torch.double, requires_grad=True)
    W = torch.randn(20, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda h, w: torch.stack(nested_decodes(h, F.relu(h), w, [2, 5, 10, 20])), (hp, W)
    )


def test_training_loss_equals_independent_weighted_average():
    cfg = MSAETrainingSAEConfig(d_in=8, d_sae=32, k_start=4, weighting="RW")
    sae = MSAETrainingSAE(cfg)
    x = torch.randn(50, 8) * 2 + 1
    out = sae.training_forward_pass(step_input(x))
    # independent recomputation from the (now renormalised) weights
    with torch.no_grad():
        xs = (x - sae.input_mean) * sae.input_scale
        hp = (xs - sae.b_dec) @ sae.W_enc + sae.b_enc
        losses = []
        for k in cfg.ladder:
            z = topk_relu(hp, k)
            xh = z @ sae.W_dec + sae.b_dec
            losses.append(((xs - xh).pow(2).sum(-1) / xs.pow(2).sum(-1)).mean())
        w = torch.tensor([4.0, 3.0, 2.0, 1.0])
        expected = (w * torch.stack(losses)).sum() / w.sum()
    assert cfg.ladder == (4, 8, 16, 32)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    # standardisation: centred and E‖x − μ‖ = √d_in on the fitting batch
    assert torch.allclose(xs.mean(0), torch.zeros(8), atol=1e-5)
    assert xs.norm(dim=-1).mean() == pytest.approx(8**0.5, rel=1e-5)


def test_decoder_rows_stay_unit_norm_and_grad_is_orthogonal():
    sae = MSAETrainingSAE(MSAETrainingSAEConfig(d_in=8, d_sae=32, k_start=4))
    x = torch.randn(64, 8)
    out = sae.training_forward_pass(step_input(x))
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(32), atol=1e-5)
    out.loss.backward()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(-1)
    assert parallel.abs().max() < 1e-6


def test_trains_with_saelens_trainer_and_nesting_orders_fvu(sparse_data):
    sae = MSAETrainingSAE(MSAETrainingSAEConfig(d_in=16, d_sae=128, k_start=4))
    cfg = SAETrainerConfig(total_training_samples=256 * 250, train_batch_size_samples=256,
                           lr=2e-3, lr_end=2e-3)
    SAETrainer(cfg, sae, sparse_data()).fit()
    x = next(sparse_data(seed=1))  # held-out samples of the same distribution
    with torch.no_grad():
        fvus = [
            float((x - sae.reconstruct(x, k)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
            for k in sae.cfg.ladder
        ]
    assert fvus[-1] < 0.1  # vs 1.0 for predicting the mean
    # more latents never hurt much: FVU decreases along the ladder (small tolerance)
    assert all(b <= a + 0.01 for a, b in zip(fvus, fvus[1:], strict=False))
    assert fvus[0] > fvus[-1]


def test_inference_encode_paths_and_default_k(tmp_path, sparse_data):
    tr = MSAETrainingSAE(MSAETrainingSAEConfig(d_in=16, d_sae=64, k_start=4))
    tr.training_forward_pass(step_input(next(sparse_data())))
    tr.save_inference_model(tmp_path)
    sae = SAE.load_from_disk(tmp_path)
    assert isinstance(sae, MSAE)
    x = next(sparse_data(seed=2))
    relu = sae.encode(x)
    hp = ((x - sae.input_mean) * sae.input_scale - sae.b_dec) @ sae.W_enc + sae.b_enc
    assert torch.allclose(relu, F.relu(hp), atol=1e-6)
    for k in (1, 5, 16, 64):
        z = sae.encode(x, k=k)
        assert int((z != 0).sum(-1).max()) <= k
        assert torch.allclose(z, topk_relu(hp, k), atol=1e-6)
    sae.set_default_k(5)
    assert torch.equal(sae(x), sae.decode(sae.encode(x, k=5)))


# ---- independent references for encode / decode, and refused inputs ------------------------
def signed_msae(unit_rows: bool) -> MSAE:
    """float64 MSAE with signed weights, a mean far from 0 and a scale far from 1."""
    sae = MSAE(MSAEConfig(d_in=10, d_sae=40, k_start=4, dtype="float64"))
    g = torch.Generator().manual_seed(21)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        if unit_rows:
            sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
        else:
            sae.W_dec.mul_(torch.rand(40, 1, generator=g, dtype=torch.float64) * 5 + 0.1)
        sae.input_mean.copy_(torch.randn(10, generator=g, dtype=torch.float64) * 3)
        sae.input_scale.fill_(0.25)
    return sae


@pytest.mark.parametrize("unit_rows", [True, False])
@pytest.mark.parametrize("k", [1, 3, 10, 39])
def test_encode_topk_matches_plain_torch_topk(unit_rows, k):
    """TopK written out: standardise, pre-activate, keep the k largest pre·‖W_dec_j‖ (= the
    paper's plain TopK when rows are unit norm), ReLU the kept values."""
    sae = signed_msae(unit_rows)
    x = torch.randn(25, 10, dtype=torch.float64) * 4 + 1
    with torch.no_grad():
        W_enc, b_enc, b_dec = sae.W_enc.clone(), sae.b_enc.clone(), sae.b_dec.clone()
        std = (x - sae.input_mean) * 0.25
        pre = (std - b_dec) @ W_enc + b_enc
        score = pre if unit_rows else pre * sae.W_dec.norm(dim=-1)
        expected = torch.zeros_like(pre)
        for r in range(pre.shape[0]):
            for j in torch.topk(score[r], k).indices.tolist():
                expected[r, j] = max(float(pre[r, j]), 0.0)
        z = sae.encode(x, k=k)
    assert torch.allclose(z, expected, atol=1e-12)
    assert int((z != 0).sum(-1).max()) <= k


def test_decode_matches_independent_formula():
    """x̂ = (z·W_dec + b_dec) / s + μ, the inverse of the standardisation x' = (x − μ)·s."""
    sae = signed_msae(unit_rows=True)
    z = torch.relu(torch.randn(7, 40, dtype=torch.float64))
    with torch.no_grad():
        expected = (z @ sae.W_dec + sae.b_dec) / 0.25 + sae.input_mean
        assert torch.allclose(sae.decode(z), expected, atol=1e-12)
        # and through leading dimensions
        assert torch.allclose(sae.decode(z.view(7, 1, 40)), expected.view(7, 1, 10), atol=1e-12)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_encode_refuses_non_finite_rows_and_counts_them(bad):
    from msae_plugin.errors import NonFiniteActivationsError

    sae = signed_msae(unit_rows=True)
    x = torch.randn(6, 10, dtype=torch.float64)
    x[1, 3] = bad
    x[4, 0] = bad
    for k in (None, 3):
        with pytest.raises(NonFiniteActivationsError, match=r"2 of 6 activation rows"):
            sae.encode(x, k=k)
    sae.check_finite = False  # the documented opt-out: no check, no sync
    assert not torch.isfinite(sae.encode(x)[1]).all()


def test_encode_refuses_overflowing_pre_activations():
    from msae_plugin.errors import NonFiniteActivationsError

    sae = MSAE(MSAEConfig(d_in=10, d_sae=40, k_start=4, dtype="float16"))
    x = torch.full((3, 10), 60000.0)  # finite in float16, but the sums overflow
    with torch.no_grad():
        sae.W_enc.fill_(1.0)
    with pytest.raises(NonFiniteActivationsError, match="overflowed"):
        sae.encode(x)


@pytest.mark.parametrize("rows", [
    torch.full((50, 8), 3.25),            # constant data
    torch.zeros(50, 8),                   # all zero (padding)
    torch.randn(1, 8),                    # one row: no spread to measure
    torch.full((50, 8), 1e6) + torch.randn(50, 8) * 1e-4,  # spread below float32 rounding
])
def test_fit_input_statistics_refuses_data_without_spread(rows):
    from msae_plugin.errors import DegenerateActivationsError

    sae = MSAETrainingSAE(MSAETrainingSAEConfig(d_in=8, d_sae=32, k_start=4))
    with pytest.raises(DegenerateActivationsError, match="no spread"):
        sae.fit_input_statistics(rows)
    assert float(sae.input_scale) == 1.0 and not bool(sae.input_stats_fitted)  # untouched


def test_fit_input_statistics_refuses_wrong_width_instead_of_reshaping():
    from msae_plugin.errors import ActivationShapeError

    sae = MSAETrainingSAE(MSAETrainingSAEConfig(d_in=8, d_sae=32, k_start=4))
    with pytest.raises(ActivationShapeError, match="d_in=8"):
        sae.fit_input_statistics(torch.randn(10, 16))  # 160 values would reshape to (20, 8)


def test_hook_z_msae_takes_per_head_activations():
    """SAELens's hook_z SAEs take (..., n_heads, d_head) and flatten it; the width check must
    run after that reshape (it used to refuse every hook_z input)."""
    from sae_lens.saes.sae import SAEMetadata

    cfg = MSAEConfig(d_in=16, d_sae=32, k_start=4, reshape_activations="hook_z",
                     metadata=SAEMetadata(hook_name="blocks.0.attn.hook_z"))
    sae = MSAE(cfg)
    x = torch.randn(2, 5, 4, 4)  # (batch, pos, n_heads, d_head), n_heads·d_head = d_in
    with torch.no_grad():
        assert sae.encode(x, k=3).shape == (2, 5, 32)
        flat = ((x.reshape(2, 5, 16) - sae.input_mean) * sae.input_scale - sae.b_dec) @ sae.W_enc
        assert torch.allclose(sae.encode(x), F.relu(flat + sae.b_enc), atol=1e-6)
        assert sae(x).shape == x.shape
