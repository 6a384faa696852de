"""The plugin's own tools on group-composition networks with known ground truth: the SAE check
(``msae_plugin.groups.sae_check``) and the InversionView adapter (``inversion_check``)."""

from __future__ import annotations

import math

import pytest
import torch

from msae_plugin.errors import GroupError
from msae_plugin.groups.construct import construct_rho_network
from msae_plugin.groups.finite import get_group
from msae_plugin.groups.inversion_check import (
    HOOK_POSITIONS,
    GroupSequenceModel,
    coset_patterns,
    group_mlp_from_folded,
    inversion_check,
)
from msae_plugin.groups.sae_check import (
    best_cosines,
    circuits_from_explanation,
    combine_networks,
    ground_truth_directions,
    hidden_activations,
    random_decoder,
    score_decoder,
    train_msae,
)


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than two fighting a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def s4():
    """S4, 3 standard circuits (tetrahedra, generic c): 48 neurons, exact, accuracy 1."""
    g = get_group("S4")
    folded, expl = construct_rho_network(g, "standard", 3, seed=0)
    return g, folded, expl, circuits_from_explanation(expl, g)


def test_identity_decoder_is_the_neuron_baseline(s4):
    g, folded, _, circuits = s4
    m = folded.n_neurons
    gt = ground_truth_directions(m, circuits)
    # one direction per neuron, per (circuit, a) and per (circuit, b)
    assert gt["neuron"][1].shape == (m, m)
    assert len(gt["circuit_a"][0]) == len(gt["circuit_b"][0]) == 3 * 4
    scores = score_decoder(torch.eye(m), gt, circuits)
    assert scores["neuron"]["best_cosines"] == [1.0] * m
    assert scores["neuron"]["share_ge"] == 1.0
    # a neuron has cosine 1/sqrt(|B|) with the indicator of its circuit row (|B| = 4)
    assert scores["circuit_a"]["mean"] == pytest.approx(0.5, abs=1e-6)
    assert scores["circuit_a"]["share_ge"] == 0.0
    assert scores["subspace"]["purity"] == pytest.approx(1.0)
    assert scores["subspace"]["mean_coverage"] == pytest.approx(1.0)
    # the circuit features themselves as a decoder: every circuit direction found exactly
    own = score_decoder(gt["circuit_a"][1], gt, circuits)
    assert own["circuit_a"]["share_ge"] == 1.0
    assert own["circuit_b"]["mean"] == pytest.approx(0.25, abs=1e-6)  # one shared neuron of 4
    # a random decoder scores well below both
    rnd = score_decoder(random_decoder(2 * m, m), gt, circuits)
    assert rnd["neuron"]["mean"] < 0.6 and rnd["circuit_a"]["mean"] < 0.5


def test_best_cosine_is_sign_free_and_scale_free():
    dirs = torch.eye(3)
    dec = torch.tensor([[-5.0, 0.0, 0.0], [0.0, 2.0, 2.0]])
    cos = best_cosines(dec, dirs)
    assert cos.tolist() == pytest.approx([1.0, 1 / math.sqrt(2), 1 / math.sqrt(2)])


def test_hidden_layer_is_the_models_hook_post(s4):
    g, folded, _, _ = s4
    model = group_mlp_from_folded(folded, g)
    x, y = model.all_pairs()
    _, cache = model.run_with_cache(x, y)
    assert torch.allclose(cache["hook_post"], hidden_activations(folded), atol=1e-5)
    assert bool((model(x, y).argmax(-1) == g.table[x, y]).all())


def test_scoring_recovers_known_sparse_directions():
    """The same training and scoring path on data that *is* sparse in known directions (24 unit
    directions in 16 dims, 2 active per row): the decoder finds most of them, so low scores on
    a group network are a property of its hidden layer, not of the pipeline."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(24, 16, generator=g), dim=-1)
    codes = torch.zeros(2048, 24)
    idx = torch.rand(2048, 24, generator=g).argsort(1)[:, :2]
    codes.scatter_(1, idx, torch.rand(2048, 2, generator=g) + 0.5)
    data = codes @ dirs
    sae, _ = train_msae(data, d_sae=32, k_start=2, steps=1000, seed=0)
    alive = (sae.encode(data, k=2) != 0).any(0)
    found = best_cosines(sae.W_dec.detach()[alive], dirs)
    chance = best_cosines(random_decoder(int(alive.sum()), 16, seed=1), dirs)
    assert found.mean() > 0.8 and found.mean() > chance.mean() + 0.15, (found, chance)
    assert (found >= 0.9).float().mean() > 0.3


def test_msae_finds_circuit_features_better_than_random(s4):
    g, folded, _, circuits = s4
    data = hidden_activations(folded)
    m = data.shape[1]
    sae, _ = train_msae(data, d_sae=64, k_start=2, steps=1000, seed=0)
    gt = ground_truth_directions(m, circuits)
    alive = (sae.encode(data, k=8) != 0).any(0)
    trained = score_decoder(sae.W_dec.detach()[alive], gt, circuits)
    rnd = score_decoder(random_decoder(int(alive.sum()), m, seed=1), gt, circuits)
    feat = (trained["circuit_a"]["mean"] + trained["circuit_b"]["mean"]) / 2
    feat_rnd = (rnd["circuit_a"]["mean"] + rnd["circuit_b"]["mean"]) / 2
    assert feat > feat_rnd + 0.04, (feat, feat_rnd)
    assert (trained["subspace"]["mean_coverage"]
            > rnd["subspace"]["mean_coverage"] + 0.1), (trained["subspace"], rnd["subspace"])


def test_adapter_activations_equal_the_group_mlp_hooks(s4):
    g, folded, _, _ = s4
    model = group_mlp_from_folded(folded, g)
    probed = GroupSequenceModel(model)
    x, y = model.all_pairs()
    _, ref = model.run_with_cache(x, y)
    tokens = probed.encode(x, y)
    _, cache = probed.run_with_cache(tokens)
    for hook, pos in HOOK_POSITIONS.items():
        act = cache[hook]
        assert act.shape[:2] == (len(x), 4)
        assert torch.equal(act[:, pos], ref[hook]), hook
        others = [p for p in range(4) if p != pos]
        assert bool((act[:, others] == 0).all()), hook
    # a malformed sequence (a special token where y belongs) has no activation anywhere
    bad = tokens[:3].clone()
    bad[:, 2] = probed.eos_id
    _, cache = probed.run_with_cache(bad)
    assert bool((cache["hook_post"] == 0).all())


def test_coset_patterns_are_permutations_and_homomorphic(s4):
    g, _, _, circuits = s4
    left, right = coset_patterns(circuits[0])
    k = left.shape[1]
    assert bool((left.sort(dim=1).values == torch.arange(k)).all())
    # right action: pattern of g·h applied to b is the pattern of g applied to ρ(h)b
    for a_, b_ in [(3, 5), (7, 11)]:
        gh = int(g.table[a_, b_])
        assert right[gh].tolist() == right[a_][right[b_]].tolist()


def test_explanation_of_another_group_is_refused(s4):
    _, _, expl, _ = s4
    with pytest.raises(GroupError, match="S4"):
        circuits_from_explanation(expl, get_group("A4"))


def test_combined_network_keeps_every_circuit():
    g = get_group("S4")
    f, ex = combine_networks([construct_rho_network(g, "standard", 1, seed=0),
                              construct_rho_network(g, "dim2_1", 1, seed=1)], g)
    assert f.n_neurons == 16 + 9
    assert [c.neurons.tolist() for c in ex.circuits] == [list(range(16)), list(range(16, 25))]
    x, y = g.table.new_tensor(range(24 * 24)) // 24, g.table.new_tensor(range(24 * 24)) % 24
    assert bool((f.logits(x, y).argmax(1) == g.table[x, y]).all())


def test_short_decoder_training_keeps_the_product(s4):
    g, folded, _, circuits = s4
    model = group_mlp_from_folded(folded, g)
    res = inversion_check(model, circuits, steps=250, batch_size=128, n_queries=24,
                          n_samples=4, site_groups=[["hook_post"]], seed=0)
    post = res.sites["hook_post"]
    z = post["agreement"]["z"]
    assert post["well_formed"] > 0.5
    assert z["all"] > 3 * z["chance"] and z["all"] > 0.2, post
    with pytest.raises(ValueError, match="unknown sites"):
        inversion_check(model, circuits, steps=1, site_groups=[["hook_resid"]])
