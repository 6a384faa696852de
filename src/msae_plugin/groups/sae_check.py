"""Do the plugin's SAEs find the known features of a group-composition network?

A ρ-set network (Wu et al. 2024; ``docs/groups.md``) is one of the few places where the features
of a hidden layer are known: the explanation assigns each hidden neuron to a circuit (an irrep ρ,
a ρ-set B) and to a pair ``(a, b) ∈ B × B``. The input space is tiny (``|G|²`` pairs), so the
activation dataset of ``hook_post`` is *exhaustive*: every input once, no sampling.

Ground truth the SAE decoder is scored against (all directions in the ``m``-dim neuron space):

1. ``neuron``: the neuron basis ``e_i``. ReLU makes it privileged; an SAE that only recovers
   neurons is the trivial baseline (an identity decoder scores 1 here by construction).
2. ``circuit_a`` / ``circuit_b``: per circuit and per ``a ∈ B``, the normalised indicator of the
   circuit's neurons ``{(a, b): b ∈ B}`` (and per ``b``, of ``{(a, b): a ∈ B}``). Neuron
   ``(a, b)`` reads x only through ``ρ(x)⁻¹a``, so the ``a``-row of a circuit is the group of
   neurons that store which coset of ``Stab(a)`` x lies in (and the ``b``-column, y's coset).
   A neuron-basis decoder scores ``1/√|B|`` on these; an SAE that groups the neurons of one
   stored coset into one latent scores higher.
3. circuit subspaces: circuits live on disjoint neurons, so a circuit's span is the coordinate
   subspace of its neurons. Scored by *purity* (per latent, the largest share of its squared
   decoder norm inside one circuit's span, averaged over latents) and *coverage* (per circuit,
   the share of its span that the latents assigned to it — purity ≥ 0.5 for that circuit —
   span: ``‖P_latents Q_circuit‖_F² / dim``, i.e. the mean squared cosine of the principal
   angles).

Scores per k: an MSAE has one decoder for every k of its ladder; what changes with k is which
latents are used. At each ladder k the candidate directions are the latents that fire on at least
one of the ``|G|²`` inputs at TopK k (``alive at k``); a SAELens TopK SAE trained at the same k
uses its alive latents. Best cosine = ``max_j |cos(d_j, g)|`` per ground-truth direction g;
reported as the mean and the share ≥ 0.9. FVU (per sample, ``msae_plugin.metrics``) at the same k.
A random decoder (as many unit rows as the SAE has latents) is the chance baseline. ``tiling``
(:func:`input_tiling`) tells whether low scores come from latents that are prototypes of single
inputs, which a finite exhaustive dataset allows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from msae_plugin.groups.finite import FiniteGroup
from msae_plugin.groups.folded import FoldedWeights

GROUND_TRUTH_KINDS = ("neuron", "circuit_a", "circuit_b")


@dataclass
class GroundTruthCircuit:
    """One circuit of an explanation, in the form the checks need.

    ``neurons[i]`` is a hidden neuron of the circuit and ``a_index[i]`` / ``b_index[i]`` the
    indices of its ``a`` and ``b`` in ``a_points`` / ``b_points`` (rows of ρ-set vectors).
    ``rho``: ``[|G|, d, d]`` irrep matrices (used for the coset patterns InversionView is scored
    on). ``a_points`` and ``b_points`` are usually the same ρ-set B; explanations of trained nets
    may give the two sides separately."""

    name: str
    irrep: str
    neurons: list[int]
    a_index: list[int]
    b_index: list[int]
    rho: torch.Tensor | None = None
    a_points: torch.Tensor | None = None
    b_points: torch.Tensor | None = None

    @property
    def n_a(self) -> int:
        return max(self.a_index) + 1 if self.a_index else 0

    @property
    def n_b(self) -> int:
        return max(self.b_index) + 1 if self.b_index else 0


def irrep_matrices(group: FiniteGroup, generators: torch.Tensor) -> torch.Tensor:
    """``[|G|, d, d]``: ρ of every element from ρ of ``group.generator_ids`` (breadth-first,
    ρ(g·s) = ρ(g)ρ(s)). Built from the explanation's own generators, so the coset patterns use
    exactly the basis its ρ-set points are written in."""
    n, d = group.order, generators.shape[-1]
    out = torch.zeros(n, d, d, dtype=torch.float64)
    known = torch.zeros(n, dtype=torch.bool)
    out[group.identity] = torch.eye(d, dtype=torch.float64)
    known[group.identity] = True
    frontier = [group.identity]
    while frontier:
        nxt = []
        for g in frontier:
            for k, s in enumerate(group.generator_ids):
                h = int(group.table[g, s])
                if not known[h]:
                    out[h] = out[g] @ generators[k].double()
                    known[h] = True
                    nxt.append(h)
        frontier = nxt
    return out


def circuits_from_explanation(explanation: Any, group: FiniteGroup) -> list[GroundTruthCircuit]:
    """The circuits of an :class:`~msae_plugin.groups.explain.Explanation` (constructed ground
    truth or extracted from a trained net) as :class:`GroundTruthCircuit` s, named
    ``<irrep>#<index>``."""
    explanation.check_group(group)
    out = []
    for i, c in enumerate(explanation.circuits):
        out.append(GroundTruthCircuit(
            name=f"{c.irrep}#{i}", irrep=c.irrep, neurons=c.neurons.tolist(),
            a_index=c.pairs[:, 0].tolist(), b_index=c.pairs[:, 1].tolist(),
            rho=irrep_matrices(group, c.generators), a_points=c.left_set.double(),
            b_points=c.right_set.double()))
    return out


def combine_networks(parts: Sequence[tuple[FoldedWeights, Any]], group: FiniteGroup
                     ) -> tuple[FoldedWeights, Any]:
    """Put constructed networks side by side on disjoint neurons (tables concatenated, neuron
    ids of each part's circuits shifted). Every part's logits are maximal at z = x·y, so the
    sum is too; this gives one testbed with circuits of several irreps."""
    import copy

    from msae_plugin.groups.explain import Explanation

    tables: list[list[torch.Tensor]] = [[], [], []]
    circuits, offset = [], 0
    for folded, expl in parts:
        folded.check(group)
        for t, w in zip(tables, (folded.w_l, folded.w_r, folded.w_u), strict=True):
            t.append(w)
        for c in expl.circuits:
            c = copy.copy(c)
            c.neurons = c.neurons + offset
            circuits.append(c)
        offset += folded.n_neurons
    folded = FoldedWeights(*(torch.cat(t).contiguous() for t in tables))
    return folded, Explanation(group=group.name, n_neurons=offset, circuits=circuits,
                               unexplained=[], fraction_neurons=1.0, fraction_norm=1.0)


def exhaustive_pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair ``(x, y)``, x-major (the order :meth:`GroupMLP.all_pairs` uses)."""
    ids = torch.arange(n * n)
    return ids // n, ids % n


def hidden_activations(folded: FoldedWeights, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[|G|², m]`` post-ReLU activations over all input pairs (``hook_post``, exhaustive)."""
    x, y = exhaustive_pairs(folded.n_elements)
    return folded.hidden(x, y).to(dtype)


# ---- ground-truth directions --------------------------------------------------------------
def ground_truth_directions(
    m: int, circuits: Sequence[GroundTruthCircuit]
) -> dict[str, tuple[list[str], torch.Tensor]]:
    """``kind -> (labels, [n, m] unit rows)`` for the kinds of :data:`GROUND_TRUTH_KINDS`.

    Neurons explained by no circuit still get their ``neuron`` direction (it is the basis);
    a row ``a`` whose neurons are all missing (a partly covered circuit) gets no direction."""
    out: dict[str, tuple[list[str], torch.Tensor]] = {
        "neuron": ([f"n{i}" for i in range(m)], torch.eye(m))
    }
    for kind, side in (("circuit_a", "a_index"), ("circuit_b", "b_index")):
        labels, rows = [], []
        for c in circuits:
            idx = torch.tensor(getattr(c, side))
            neurons = torch.tensor(c.neurons)
            for v in sorted(set(idx.tolist())):
                sel = neurons[idx == v]
                if len(sel) == 0:
                    continue
                row = torch.zeros(m)
                row[sel] = 1.0
                rows.append(row / row.norm())
                labels.append(f"{c.name}:{kind[-1]}{v}")
        out[kind] = (labels, torch.stack(rows) if rows else torch.zeros(0, m))
    return out


def best_cosines(decoder: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """``[n_gt]``: for each ground-truth direction the largest ``|cos|`` with a decoder row
    (sign-free: a latent is a direction, and TopK latents are non-negative either way)."""
    if len(directions) == 0:
        return torch.zeros(0)
    if len(decoder) == 0:
        return torch.zeros(len(directions))
    d = torch.nn.functional.normalize(decoder.double(), dim=-1)
    g = torch.nn.functional.normalize(directions.double(), dim=-1)
    return (g @ d.T).abs().max(dim=1).values.float()


def subspace_scores(decoder: torch.Tensor, circuits: Sequence[GroundTruthCircuit],
                    m: int) -> dict[str, Any]:
    """Purity of the latents and coverage of each circuit's span (module docstring, item 3)."""
    if len(decoder) == 0 or not circuits:
        return {"purity": float("nan"), "coverage": {}, "mean_coverage": float("nan")}
    d = torch.nn.functional.normalize(decoder.double(), dim=-1)
    shares = torch.stack([d[:, c.neurons].pow(2).sum(-1) for c in circuits], dim=1)  # [n, C]
    best, owner = shares.max(dim=1)
    coverage = {}
    for ci, c in enumerate(circuits):
        mine = d[(owner == ci) & (best >= 0.5)]
        if len(mine) == 0:
            coverage[c.name] = 0.0
            continue
        q_lat = torch.linalg.qr(mine.T).Q  # [m, r] orthonormal basis of the latents' span
        r = torch.linalg.matrix_rank(mine)
        q_lat = q_lat[:, :r]
        coverage[c.name] = float(q_lat[c.neurons].pow(2).sum()) / len(c.neurons)
    return {"purity": float(best.mean()), "coverage": coverage,
            "mean_coverage": sum(coverage.values()) / len(coverage)}


def score_decoder(decoder: torch.Tensor, gt: dict[str, tuple[list[str], torch.Tensor]],
                  circuits: Sequence[GroundTruthCircuit], threshold: float = 0.9
                  ) -> dict[str, Any]:
    """Best cosine per ground-truth direction (mean, share ≥ ``threshold``, all values) and the
    subspace scores for one set of decoder directions ``[n_latents, m]``."""
    out: dict[str, Any] = {"n_directions": len(decoder)}
    for kind, (labels, dirs) in gt.items():
        cos = best_cosines(decoder, dirs)
        out[kind] = {
            "mean": float(cos.mean()) if len(cos) else float("nan"),
            "share_ge": float((cos >= threshold).float().mean()) if len(cos) else float("nan"),
            "best_cosines": [round(float(v), 4) for v in cos],
            "labels": labels,
        }
    out["subspace"] = subspace_scores(decoder, circuits, decoder.shape[1] if len(decoder) else 0)
    return out


def input_tiling(decoder: torch.Tensor, data: torch.Tensor, max_inputs: int = 4096) -> float:
    """Mean over latents of the best ``|cos|`` between the latent's decoder row and a centred
    input ``h − mean(h)`` (at most ``max_inputs`` of them, evenly spaced). High values mean the
    dictionary tiles the (finite, exhaustive) input set with prototypes instead of finding
    features shared across inputs; a diagnostic for low ground-truth scores."""
    if len(decoder) == 0:
        return float("nan")
    step = max(1, len(data) // max_inputs)
    centred = (data - data.mean(0))[::step]
    return float(best_cosines(centred, decoder).mean())


def random_decoder(n: int, m: int, seed: int = 0) -> torch.Tensor:
    """``[n, m]`` unit rows drawn uniformly on the sphere: the chance baseline."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, m, generator=g), dim=-1)


# ---- SAE training -------------------------------------------------------------------------
def _batches(data: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled epochs over the exhaustive dataset (SAELens's trainer takes any
    iterator of ``[batch, d_in]`` tensors; there is no activation store to fill)."""
    n = data.shape[0]
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            yield data[perm[i: i + batch_size]]


def _fit(sae: Any, data: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """Train with SAELens's ``SAETrainer`` (Adam, grad clip 1, constant LR with a linear decay over
    the last 20 % of steps), as the benchmarks do. Returns the wall time in seconds."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    batch_size = min(batch_size, data.shape[0])
    cfg = SAETrainerConfig(
        total_training_samples=steps * batch_size, train_batch_size_samples=batch_size,
        lr=lr, lr_end=lr, lr_scheduler_name="constant", lr_decay_steps=int(0.2 * steps),
        device="cpu", logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=1,
    )
    trainer = SAETrainer(cfg, sae, _batches(data, batch_size, seed))
    if getattr(sae.cfg, "normalize_activations", "none") == "expected_average_only_in":
        # SAELens's formula, from the whole (exhaustive) dataset, without using up batches
        trainer.activation_scaler.scaling_factor = (
            float(data.shape[1]) ** 0.5 / float(data.norm(dim=-1).mean()))
    t0 = time.perf_counter()
    from contextlib import redirect_stderr
    from io import StringIO

    with redirect_stderr(StringIO()):  # SAETrainer's tqdm bar
        trainer.fit()
    sae.eval()
    return time.perf_counter() - t0


def train_msae(data: torch.Tensor, d_sae: int, k_start: int = 2, steps: int = 1500,
               batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> tuple[Any, float]:
    """An ``msae`` (RW weighting, nmse loss: the plugin's defaults) on ``data``; ladder
    ``k_start, 2·k_start, …, d_sae``. Input statistics are fitted on the whole dataset."""
    from msae_plugin.msae.config import MSAETrainingSAEConfig
    from msae_plugin.msae.training_sae import MSAETrainingSAE

    torch.manual_seed(seed)
    sae = MSAETrainingSAE(MSAETrainingSAEConfig(d_in=data.shape[1], d_sae=d_sae, k_start=k_start))
    sae.fit_input_statistics(data)
    return sae, _fit(sae, data, steps, batch_size, lr, seed)


def train_topk(data: torch.Tensor, d_sae: int, k: int, steps: int = 1500, batch_size: int = 64,
               lr: float = 1e-3, seed: int = 0) -> tuple[Any, float]:
    """A SAELens ``topk`` SAE at ``k`` (SAELens's input-norm scaling, as in the benchmarks)."""
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=data.shape[1], d_sae=d_sae, k=k,
                                                normalize_activations="expected_average_only_in"))
    return sae, _fit(sae, data, steps, batch_size, lr, seed)


@torch.no_grad()
def alive_latents(sae: Any, data: torch.Tensor, k: int | None) -> torch.Tensor:
    """``[d_sae]`` bool: latents that fire on at least one row of ``data`` (an MSAE at TopK
    ``k``; any other SAE through its own ``encode`` with ``k=None``)."""
    z = sae.encode(data, k=k) if k is not None else sae.encode(data)
    return (z != 0).any(0)


@torch.no_grad()
def fvu_at(sae: Any, data: torch.Tensor, k: int | None) -> dict[str, float]:
    """Per-sample FVU, SAELens's explained variance and L0 (``msae_plugin.metrics``)."""
    from msae_plugin.metrics import evaluate_sae, mode_name

    res = evaluate_sae(sae, data, ks=[k], cknna_samples=0)[mode_name(k)]
    rq, sp = res["reconstruction_quality"], res["sparsity"]
    return {"fvu": rq["fvu"], "explained_variance": rq["explained_variance"], "l0": sp["l0"]}


@dataclass
class SAECheckResult:
    """Rows of the comparison: one per (model, k) plus the reference decoders."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        head = ("model", "k", "latents", "FVU", "neuron", "≥0.9", "circ_a", "≥0.9", "circ_b",
                "≥0.9", "purity", "coverage", "tiling")
        lines = [" | ".join(head)]
        for r in self.rows:
            s = r["scores"]

            def f(v: float) -> str:
                return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

            lines.append(" | ".join([
                r["model"], str(r.get("k", "—")), str(s["n_directions"]), f(r.get("fvu")),
                f(s["neuron"]["mean"]), f(s["neuron"]["share_ge"]),
                f(s["circuit_a"]["mean"]), f(s["circuit_a"]["share_ge"]),
                f(s["circuit_b"]["mean"]), f(s["circuit_b"]["share_ge"]),
                f(s["subspace"]["purity"]), f(s["subspace"]["mean_coverage"]),
                f(r.get("tiling")),
            ]))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "rows": self.rows}


def decoder_rows(sae: Any) -> torch.Tensor:
    """``[d_sae, d_in]`` decoder directions in the raw activation space (the MSAE's
    standardisation and SAELens's norm scaling are scalar, so directions are unchanged)."""
    return sae.W_dec.detach().float().cpu()


def sae_check(
    data: torch.Tensor,
    circuits: Sequence[GroundTruthCircuit],
    d_sae: int | None = None,
    k_start: int = 2,
    topk_ks: Sequence[int] | None = (2, 4, 8, 16),
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    threshold: float = 0.9,
) -> SAECheckResult:
    """Train an MSAE (and a TopK SAE at each of ``topk_ks``) on ``data`` (``[|G|², m]``
    exhaustive ``hook_post`` activations) and score their decoders against the ground truth of
    ``circuits`` at each k; rows for the identity (neuron) and a random decoder come first."""
    m = data.shape[1]
    d_sae = d_sae or 2 * m
    gt = ground_truth_directions(m, circuits)
    res = SAECheckResult(config={
        "d_in": m, "d_sae": d_sae, "n_inputs": data.shape[0], "k_start": k_start,
        # how dense the layer is: a ρ-set circuit fires about half its neurons on every input
        "data_l0": float((data > 0).float().sum(1).mean()),
        "topk_ks": list(topk_ks or []), "steps": steps, "batch_size": batch_size, "lr": lr,
        "seed": seed, "threshold": threshold, "circuits": [
            {"name": c.name, "irrep": c.irrep, "n_neurons": len(c.neurons), "n_a": c.n_a,
             "n_b": c.n_b} for c in circuits],
        "ground_truth_counts": {k: len(v[0]) for k, v in gt.items()},
    })
    res.rows.append({"model": "identity", "scores": score_decoder(torch.eye(m), gt, circuits,
                                                                  threshold)})
    rnd = random_decoder(d_sae, m, seed)
    res.rows.append({"model": "random", "tiling": input_tiling(rnd, data),
                     "scores": score_decoder(rnd, gt, circuits, threshold)})
    msae, secs = train_msae(data, d_sae, k_start, steps, batch_size, lr, seed)
    res.config["msae_ladder"] = list(msae.cfg.ladder)
    res.config["msae_train_seconds"] = round(secs, 2)
    dec = decoder_rows(msae)
    for k in msae.cfg.ladder:
        alive = alive_latents(msae, data, k)
        res.rows.append({"model": "msae", "k": k, **fvu_at(msae, data, k),
                         "tiling": input_tiling(dec[alive], data),
                         "scores": score_decoder(dec[alive], gt, circuits, threshold)})
    res.config["topk_train_seconds"] = {}
    for k in topk_ks or []:
        sae, secs = train_topk(data, d_sae, k, steps, batch_size, lr, seed)
        res.config["topk_train_seconds"][k] = round(secs, 2)
        alive = alive_latents(sae, data, None)
        res.rows.append({"model": "topk", "k": k, **fvu_at(sae, data, None),
                         "tiling": input_tiling(decoder_rows(sae)[alive], data),
                         "scores": score_decoder(decoder_rows(sae)[alive], gt, circuits,
                                                 threshold)})
    return res


def check_group(folded: FoldedWeights, group: FiniteGroup) -> None:
    """Refuse tables of another group before training anything on them."""
    folded.check(group)
