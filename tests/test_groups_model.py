"""The finite-group testbed's model, training, brute-force accuracy and equivariance metrics:
hook shapes, folded == forward, brute force == a plain loop (ties wrong), a short training run
that learns, the shipped S4 model's accuracy and R², an exactly bi-equivariant constructed S5
network (Wu et al. 2024's ρ-set circuit), and the refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch

from msae_plugin.errors import GroupError
from msae_plugin.groups.brute_force import brute_force_accuracy, correct_pairs
from msae_plugin.groups.equivariance import (
    all_logits,
    argument_equivariance,
    coset_concentration,
    equivariance_report,
    irrep_purity,
    logit_biequivariance,
    neuron_purity,
)
from msae_plugin.groups.finite import get_group
from msae_plugin.groups.folded import FoldedWeights
from msae_plugin.groups.irreps import get_irrep
from msae_plugin.groups.model import GroupMLP, GroupMLPConfig, load_shipped_model
from msae_plugin.groups.training import TrainConfig, split_pairs, train_group_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: torch's thread pool only adds contention (10x slower on a busy
    2-core machine), so the module runs single-threaded and restores the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(group: str = "S4", bias: bool = False, seed: int = 0) -> GroupMLP:
    return GroupMLP(GroupMLPConfig(group, d_embed=16, d_hidden=12, unembed_bias=bias, seed=seed))


def simplex_circuit(group_name: str = "S5", seed: int = 3, scale: float = 1.0) -> FoldedWeights:
    """The §4.2 ρ-set circuit: standard irrep, B = the simplex vertices (the orbit of a vector
    fixed by a point stabiliser), one neuron per (a, b) ∈ B², c generic:
    w_l = s⟨a, ρ(x)c⟩, w_r = -s⟨c, ρ(y)b⟩, w_u = -s⟨a, ρ(z)b⟩."""
    group = get_group(group_name)
    rho = get_irrep(group, "standard").matrices  # [n, d, d]
    gen = torch.Generator().manual_seed(seed)
    stab = [g for g, p in enumerate(group.perms) if p[0] == 0]
    v = rho[stab].mean(0) @ torch.randn(rho.shape[1], generator=gen, dtype=torch.float64)
    v = v / v.norm()
    orbit = rho @ v  # [n, d]
    verts: list[torch.Tensor] = []
    for w in orbit:
        if all((w - u).norm() > 1e-8 for u in verts):
            verts.append(w)
    B = torch.stack(verts)  # [k, d]
    c = torch.randn(rho.shape[1], generator=gen, dtype=torch.float64)
    a = B.repeat_interleave(len(B), 0)  # neuron (a, b), a-major
    b = B.repeat(len(B), 1)
    w_l = scale * torch.einsum("md,xde,e->mx", a, rho, c)
    w_r = -scale * torch.einsum("d,yde,me->my", c, rho, b)
    w_u = -scale * torch.einsum("md,zde,me->mz", a, rho, b)
    return FoldedWeights(w_l, w_r, w_u)


# ---- model and hooks ------------------------------------------------------------------------


def test_hooks_fire_with_the_right_shapes():
    model = small()
    x, y = torch.tensor([0, 5, 23]), torch.tensor([1, 2, 3])
    logits, cache = model.run_with_cache(x, y)
    assert logits.shape == (3, 24)
    assert cache["hook_embed_l"].shape == (3, 16) and cache["hook_embed_r"].shape == (3, 16)
    assert cache["hook_pre"].shape == (3, 12) and cache["hook_post"].shape == (3, 12)
    assert torch.equal(cache["hook_post"], torch.relu(cache["hook_pre"]))
    assert torch.equal(cache["hook_logits"], logits)
    assert torch.equal(cache["hook_embed_l"], model.embed_l[x])


def test_a_hook_intervention_changes_the_output():
    model = small()
    x, y = torch.tensor([0, 1]), torch.tensor([2, 3])
    out = model.run_with_hooks(x, y, fwd_hooks=[("hook_post", lambda t, hook: t * 0)])
    assert torch.allclose(out, torch.zeros_like(out))


@pytest.mark.parametrize("bias", [False, True])
def test_folded_logits_equal_forward_logits(bias):
    model = small(bias=bias)
    if bias:
        with torch.no_grad():
            model.b_U.normal_()
    x, y = model.all_pairs()
    folded = model.folded()
    assert folded.w_l.dtype == torch.float64 and folded.w_l.shape == (12, 24)
    with torch.no_grad():
        ref = model(x, y).double()
        fast = model.fast_logits(x, y).double()
    torch.testing.assert_close(folded.logits(x, y), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    model = small(bias=True, seed=4)
    model.save(tmp_path / "m", metadata={"note": "x"})
    again = GroupMLP.load(tmp_path / "m")
    assert again.cfg == model.cfg and again.metadata == {"note": "x"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_registered_as_a_hooked_model_through_the_plugin_hook():
    from msae_plugin.builtin import group_models
    from msae_plugin.manager import create_plugin_manager

    pm = create_plugin_manager(load_entry_points=False)
    pm.register(group_models, name="groups")
    specs = [s for batch in pm.hook.msae_register_hooked_models() for s in batch]
    assert [(s.name, s.model_class) for s in specs] == [("GroupMLP", GroupMLP)]


# ---- brute force ------------------------------------------------------------------------------


def loop_accuracy(folded: FoldedWeights, group) -> float:
    correct = 0
    for x in range(group.order):
        for y in range(group.order):
            logits = folded.logits(torch.tensor([x]), torch.tensor([y]))[0].tolist()
            best = max(logits)
            winners = [z for z, v in enumerate(logits) if v == best]
            correct += winners == [int(group.table[x, y])]
    return correct / group.order ** 2


def test_brute_force_equals_a_loop_over_all_pairs():
    group = get_group("S4")
    model = small(seed=2)
    train_group_model(model, TrainConfig(steps=150, progress=False, eval_every=150))
    folded = model.folded()
    acc, seconds = brute_force_accuracy(model)
    assert 0.05 < acc < 1.0  # a partly trained model: the comparison is not trivial
    assert acc == loop_accuracy(folded, group)
    assert brute_force_accuracy(folded, group, chunk=5)[0] == acc
    assert seconds >= 0


def test_ties_count_as_wrong():
    group = get_group("S3")
    zero = torch.zeros(4, 6, dtype=torch.float64)
    assert brute_force_accuracy(FoldedWeights(zero, zero, zero), group)[0] == 0.0
    # the bias makes z = e the strict answer: correct exactly on pairs with x·y = e
    ok = correct_pairs(FoldedWeights(zero, zero, zero, torch.eye(6, dtype=torch.float64)[0]),
                       group)
    assert torch.equal(ok, group.table == 0)


# ---- training ---------------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_complete():
    tr, te = split_pairs(24, 0.6, seed=1)
    assert len(tr) == round(0.6 * 576) and len(tr) + len(te) == 576
    assert set(tr.tolist()).isdisjoint(te.tolist())
    assert torch.equal(tr, split_pairs(24, 0.6, seed=1)[0])
    assert not torch.equal(tr, split_pairs(24, 0.6, seed=2)[0])


def test_short_training_run_improves_train_accuracy():
    model = GroupMLP(GroupMLPConfig("S4", d_embed=32, d_hidden=32, seed=1))
    hist0 = train_group_model(GroupMLP(model.cfg), TrainConfig(steps=1, progress=False))
    seen = []
    hist = train_group_model(model, TrainConfig(steps=300, eval_every=100, progress=False),
                             on_eval=lambda step, m, h: seen.append((step, h.test_acc[-1])))
    assert hist.steps == [100, 200, 300] and hist.final_step == 300
    assert seen == list(zip(hist.steps, hist.test_acc, strict=True))
    assert hist.train_acc[-1] > hist0.train_acc[-1] + 0.25  # from chance (~0.04) to ~0.45
    assert hist.train_loss[-1] < hist0.train_loss[-1]
    assert hist.n_train == 346 and hist.n_test == 230


def test_early_stop_holds_the_threshold():
    model = small()
    hist = train_group_model(model, TrainConfig(steps=500, eval_every=10, early_stop_acc=0.0,
                                                early_stop_hold=30, progress=False))
    assert hist.stopped_early and hist.final_step == 40  # first eval at 10, held 30 steps


# ---- the shipped S4 model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    return load_shipped_model("S4")


def test_shipped_s4_model_is_accurate_and_biequivariant(shipped):
    assert shipped.cfg.group == "S4" and shipped.n_elements == 24
    acc, _ = brute_force_accuracy(shipped)
    assert acc >= 0.99
    bi = logit_biequivariance(shipped)
    assert 0.9 <= bi.r2 < 1.0 and bi.argmax_is_identity and bi.ideal_margin > 0
    arg = argument_equivariance(shipped)
    assert arg.left > 0.9 and arg.right > 0.9
    meta = shipped.metadata
    assert meta["brute_force_accuracy"] == pytest.approx(acc, abs=1e-9)
    assert meta["steps"] >= 60_000


def test_shipped_s4_neurons_are_pure_and_rank_one(shipped):
    pur = neuron_purity(shipped)
    assert pur["w_l"].count("standard", 0.9, rank1=0.9) >= 30  # two tetrahedral circuits
    rep = equivariance_report(shipped)
    assert rep["neurons_by_irrep"]["standard"]["pure_rank1_all_three"] >= 30
    json.dumps(rep)


# ---- a constructed, exactly bi-equivariant network ---------------------------------------------


@pytest.fixture(scope="module")
def circuit():
    return simplex_circuit("S5")


def test_constructed_circuit_is_exactly_biequivariant(circuit):
    group = get_group("S5")
    assert circuit.n_neurons == 25
    bi = logit_biequivariance(circuit, group)
    assert bi.r2 == pytest.approx(1.0, abs=1e-9)
    assert bi.argmax_is_identity and bi.ideal_margin > 0
    arg = argument_equivariance(circuit, group, elements=group.generator_ids + [7, 50])
    assert arg.left == pytest.approx(1.0, abs=1e-9) and arg.right == pytest.approx(1.0, abs=1e-9)
    assert brute_force_accuracy(circuit, group)[0] == 1.0


def test_constructed_circuit_matches_the_closed_form(circuit):
    """F(g) = const - n/(2(n-1)) Σ_j |α_{g(j)} - α_j| (brief §4.2) up to the constant."""
    group = get_group("S5")
    F = logit_biequivariance(circuit, group).F
    # neuron (a, b) is a-major, so w_l[(a, ·)][x] = ⟨a, ρ(x)c⟩; α_a = ⟨a, c⟩ is its value at e
    # and ⟨ρ(g)a, c⟩ = ⟨a, ρ(g⁻¹)c⟩ its value at g⁻¹ (ρ(g) permutes the vertices a)
    per_vertex = circuit.w_l.reshape(5, 5, -1)[:, 0, :]  # [a, x]
    alphas = per_vertex[:, 0]
    moved = per_vertex[:, group.inverse]  # [a, g]
    closed = -(5 / 8) * (moved - alphas[:, None]).abs().sum(0)
    diff = F - closed
    assert torch.allclose(diff, diff[0].expand_as(diff), atol=1e-9)
    assert len(set(alphas.round(decimals=6).tolist())) == 5  # distinct α: unique maximum


def test_constructed_circuit_neurons_are_pure_rank_one_and_coset_constant(circuit):
    group = get_group("S5")
    for side in ("w_l", "w_r", "w_u"):
        pur = irrep_purity(getattr(circuit, side), group)
        assert set(pur.top_names()) == {"standard"}
        assert torch.allclose(pur.purity, torch.ones(25, dtype=torch.float64), atol=1e-9)
        if side != "w_u":  # w_u = ⟨a, ρ(z)b⟩ is rank 1 too
            assert torch.allclose(pur.rank1, torch.ones(25, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(irrep_purity(circuit.w_u, group).rank1,
                          torch.ones(25, dtype=torch.float64), atol=1e-9)
    # w_l depends on x only through ρ(x)⁻¹a: constant on the cosets of a point stabiliser (S4)
    assert float(coset_concentration(circuit.w_l, group).max()) < 1e-20
    noise = torch.randn(3, 120, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(coset_concentration(noise, group).min()) > 0.5


def test_random_network_is_far_from_biequivariant():
    group = get_group("S4")
    bi = logit_biequivariance(small(seed=5), group)
    assert bi.r2 < 0.5
    assert all(math.isfinite(v) for v in bi.F.tolist())


def test_all_logits_layout():
    model = small(seed=6)
    folded = model.folded()
    logits = all_logits(folded, model.group)
    x, y = torch.tensor([3]), torch.tensor([17])
    torch.testing.assert_close(logits[3, 17], folded.logits(x, y)[0])


# ---- refusals ---------------------------------------------------------------------------------


def test_unknown_group_name_is_refused():
    with pytest.raises(GroupError, match="unknown group 'Q8'"):
        GroupMLP(GroupMLPConfig("Q8"))
    with pytest.raises(GroupError, match="no shipped model for S6"):
        load_shipped_model("S6")


def test_group_too_large_is_refused():
    with pytest.raises(GroupError, match="more than 720 elements"):
        GroupMLP(GroupMLPConfig("S7"))


def test_model_for_another_group_is_refused(tmp_path):
    model = small()  # S4: 24 outputs
    model.save(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    doc = json.loads(cfg_path.read_text())
    doc["config"]["group"] = "S5"
    cfg_path.write_text(json.dumps(doc))
    with pytest.raises(GroupError, match=r"24 outputs but S5 has 120 elements"):
        GroupMLP.load(tmp_path / "m")
    with pytest.raises(GroupError, match=r"24 outputs but A5 has 60 elements"):
        brute_force_accuracy(model.folded(), get_group("A5"))
    with pytest.raises(GroupError, match=r"24 outputs but S5 has 120"):
        logit_biequivariance(model.folded(), get_group("S5"))


def test_bad_ids_and_config_are_refused(tmp_path):
    model = small()
    with pytest.raises(GroupError, match="outside 0..23"):
        model(torch.tensor([24]), torch.tensor([0]))
    with pytest.raises(GroupError, match="integer element ids"):
        model(torch.tensor([0.5]), torch.tensor([0]))
    with pytest.raises(GroupError, match="d_hidden"):
        GroupMLPConfig("S4", d_hidden=0)
    with pytest.raises(GroupError, match="not a saved GroupMLP"):
        GroupMLP.load(tmp_path)
    with pytest.raises(GroupError, match="train_frac"):
        TrainConfig(train_frac=1.0)


def test_training_script_writes_models_and_results(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "train_group_models.py"
    spec = importlib.util.spec_from_file_location("train_group_models", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    before = torch.get_num_threads()
    assert script.main(["--group", "S3", "--seeds", "0", "1", "--steps", "20", "--eval-every",
                        "10", "--d-embed", "8", "--d-hidden", "8", "--out", str(tmp_path),
                        "--no-progress"]) == 0
    torch.set_num_threads(before)
    results = json.loads((tmp_path / "S3_results.json").read_text())
    assert sorted(results["runs"]) == ["0", "1"]
    run = results["runs"]["1"]
    assert run["steps"] == 20 and 0.0 <= run["brute_force_accuracy"] <= 1.0
    assert "biequivariance_r2" in run["equivariance"]
    model = GroupMLP.load(tmp_path / "S3_seed1")
    assert model.cfg.seed == 1 and model.metadata["steps"] == 20
    assert brute_force_accuracy(model)[0] == run["brute_force_accuracy"]
