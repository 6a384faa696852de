"""Explanations of group-composition networks as ρ-set circuits, and their automatic extraction
from weights (Wu et al. 2024; research brief §4 and §6.2 "On a real trained model").

An explanation lists circuits. A circuit has an irrep ρ (given by its generator matrices, so the
verifier can check it instead of trusting it), a left ρ-set A, a right ρ-set B, and real neurons
each labelled by a pair (a, b) ∈ A×B. Its idealised neurons are

    w̃_l^{(a,b)}(x) = φ(ρ(x)⁻¹a),   w̃_r^{(a,b)}(y) = ψ(ρ(y)b),   w̃_u^{(a,b)}(z) = κ·share·⟨a, ρ(z)b⟩,

with φ, ψ arbitrary tables on A and B (the §4.2 form is φ(a) = s⟨a, c⟩, ψ(b) = −s⟨c, b⟩,
κ = −s), κ one output scale per circuit and ``share`` splitting it among duplicated neurons of
one pair (shares of a pair sum to 1, as the output weights of neurons with the same pattern add
up). Pairs of A×B without a real neuron are padded by the verifier with virtual neurons (actual
weights 0). This is the most general form that is exactly bi-equivariant, which is what makes the
verifier's |G|-evaluation ideal margin valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from msae_plugin.errors import GroupError
from msae_plugin.groups.finite import FiniteGroup
from msae_plugin.groups.folded import FoldedWeights
from msae_plugin.groups.irreps import Irrep, real_irreps
from msae_plugin.groups.rho_sets import dedup, match_points, orbit


@dataclass
class Circuit:
    """One ρ-set circuit. ``generators[k]`` is ρ of ``group.generator_ids[k]``; ``pairs[i]`` =
    (index into ``left_set``, index into ``right_set``) of neuron ``neurons[i]``."""

    irrep: str
    generators: torch.Tensor  # [n_gens, d, d]
    left_set: torch.Tensor  # A: [p, d]
    right_set: torch.Tensor  # B: [q, d]
    neurons: torch.Tensor  # long [k]
    pairs: torch.Tensor  # long [k, 2]
    phi: torch.Tensor  # [p]
    psi: torch.Tensor  # [q]
    kappa: float
    shares: torch.Tensor  # [k]
    c: torch.Tensor | None = None  # the shared vector of the §4.2 form, when known

    @property
    def rho_set(self) -> torch.Tensor:
        """The left ρ-set (A = B for the constructed circuits)."""
        return self.left_set

    @property
    def n_pairs(self) -> int:
        return len(self.left_set) * len(self.right_set)

    @property
    def n_virtual(self) -> int:
        """Pairs of A×B without a real neuron (padded by the verifier)."""
        return self.n_pairs - len({tuple(p) for p in self.pairs.tolist()})

    def describe(self) -> str:
        return (f"{self.irrep}: |A|={len(self.left_set)}, |B|={len(self.right_set)}, "
                f"{len(self.neurons)} neurons, {self.n_virtual} virtual, κ={self.kappa:.4g}")


@dataclass
class Explanation:
    """Circuits of a network for ``group``; ``purity[i]`` the share of neuron i's (centred) norm
    in its best irrep (min over w_l, w_r, w_u), ``neuron_irrep[i]`` that irrep or None."""

    group: str
    n_neurons: int
    circuits: list[Circuit]
    unexplained: list[int]
    fraction_neurons: float
    fraction_norm: float
    purity: torch.Tensor | None = None
    neuron_irrep: list[str | None] | None = None
    notes: list[str] = field(default_factory=list)

    def check_group(self, group: FiniteGroup) -> None:
        if self.group != group.name:
            raise GroupError(f"this explanation is for {self.group}, not {group.name}; extract "
                             f"one for {group.name} with explain(folded, group)")

    def neuron_map(self) -> dict[int, tuple[int, int, int]]:
        """neuron → (circuit index, left index, right index)."""
        out: dict[int, tuple[int, int, int]] = {}
        for ci, circ in enumerate(self.circuits):
            for n, (j, k) in zip(circ.neurons.tolist(), circ.pairs.tolist(), strict=True):
                out[n] = (ci, j, k)
        return out

    def describe(self) -> str:
        lines = [f"{self.group}: {len(self.circuits)} circuits, {len(self.unexplained)} of "
                 f"{self.n_neurons} neurons unexplained ({100 * self.fraction_norm:.1f} % of the "
                 "weight norm explained)"]
        lines += ["  " + c.describe() for c in self.circuits]
        return "\n".join(lines)


def coefficients(table: torch.Tensor, irrep: Irrep) -> torch.Tensor:
    """``[m, d, d]`` Fourier coefficients C = (d/|G|) Σ_x w(x) ρ(x): the projection of w on the
    irrep is tr(Cᵀρ(x)) and its squared norm (|G|/d)·‖C‖² (real-type irreps)."""
    n, d = len(irrep.matrices), irrep.dim
    flat = table @ irrep.matrices.reshape(n, d * d) * (d / n)
    return flat.reshape(-1, d, d)


def irrep_purity(folded: FoldedWeights, group: FiniteGroup
                 ) -> tuple[torch.Tensor, list[str | None], dict[str, torch.Tensor]]:
    """Per neuron: the share of its centred norm in the best irrep (min over the three tables),
    that irrep's name when all three tables agree on it (else None), and per irrep the
    ``[m, 3]`` shares (w_l, w_r, w_u). The trivial irrep (constant offsets) is excluded: a
    constant shift of w_l or w_r fits into φ, ψ, and one of w_u never changes the argmax."""
    tables = [folded.w_l, folded.w_r, folded.w_u]
    centred = [t - t.mean(1, keepdim=True) for t in tables]
    total = torch.stack([c.pow(2).sum(1) for c in centred], 1).clamp_min(1e-300)  # [m, 3]
    shares: dict[str, torch.Tensor] = {}
    for r in real_irreps(group):
        if r.name == "trivial" or not r.real_type:
            continue
        e = torch.stack([coefficients(c, r).pow(2).sum((1, 2)) for c in centred], 1)
        shares[r.name] = e * (group.order / r.dim) / total
    names = list(shares)
    stack = torch.stack([shares[n] for n in names])  # [R, m, 3]
    best = stack.argmax(0)  # [m, 3]
    purity = stack.max(0).values.min(1).values
    labels: list[str | None] = []
    for i in range(folded.n_neurons):
        b = best[i].tolist()
        labels.append(names[b[0]] if b[0] == b[1] == b[2] else None)
    return purity, labels, shares


def action(irrep: Irrep, points: torch.Tensor, tol: float = 1e-6) -> torch.Tensor | None:
    """``[|G|, k]`` long: ``perm[g, j]`` = index of ρ(g)·points[j], or None if some ρ(g) does not
    permute the points."""
    out = []
    for g in range(len(irrep.matrices)):
        idx = match_points(points @ irrep.matrices[g].T, points, tol)
        if idx is None:
            return None
        out.append(idx)
    return torch.stack(out)


def _subgroup_closure(group: FiniteGroup, elems: list[int]) -> list[int]:
    have = {0, *elems}
    frontier = list(have)
    table = group.table.tolist()
    while frontier:
        new = []
        for g in frontier:
            for h in list(have):
                for k in (table[g][h], table[h][g]):
                    if k not in have:
                        have.add(k)
                        new.append(k)
        frontier = new
    return sorted(have)


def snap_to_orbits(group: FiniteGroup, irrep: Irrep, units: torch.Tensor, tol: float
                   ) -> tuple[list[torch.Tensor], list[tuple[int, int] | None]]:
    """Snap approximate unit vectors to exact orbits: symmetrise a representative over (the
    subgroup generated by) its approximate stabiliser, which gives an exactly fixed vector, and
    take its orbit. Returns the orbits and, per vector, (orbit index, point index) or None."""
    orbits: list[torch.Tensor] = []
    where: list[tuple[int, int] | None] = [None] * len(units)
    for i in range(len(units)):
        if where[i] is not None:
            continue
        u = units[i]
        near = (irrep.matrices @ u - u).norm(dim=1) <= tol
        stab = _subgroup_closure(group, torch.nonzero(near).flatten().tolist())
        fixed = irrep.matrices[stab].mean(0) @ u
        if float(fixed.norm()) < 0.5:  # the stabiliser guess fixes no vector near u
            continue
        orb = orbit(irrep, fixed / fixed.norm())
        hit = False
        for j in range(len(units)):
            if where[j] is None:
                d = (orb - units[j]).norm(dim=1)
                if float(d.min()) <= tol:
                    where[j] = (len(orbits), int(d.argmin()))
                    hit = True
        if hit:
            orbits.append(orb)
    return orbits, where


def _fit_circuit(group: FiniteGroup, irrep: Irrep, folded: FoldedWeights, w_u_c: torch.Tensor,
                 left: torch.Tensor, right: torch.Tensor, neurons: list[int],
                 pairs: list[tuple[int, int]], c: torch.Tensor) -> Circuit | None:
    """Least-squares tables φ, ψ (means over the neuron-permutation orbits), κ and shares."""
    pa, pb = action(irrep, left), action(irrep, right)
    if pa is None or pb is None:
        return None
    n = group.order
    idx = torch.tensor(neurons)
    j = torch.tensor([p[0] for p in pairs])
    li = torch.tensor([p[1] for p in pairs])
    inv = group.inverse
    # left: w_l^i(x) ≈ φ(π_{x⁻¹}(j_i)); right: w_r^i(y) ≈ ψ(π_y(l_i))
    kl = pa[inv][:, j].T  # [k, n]
    kr = pb[:, li].T
    phi = torch.zeros(len(left), dtype=torch.float64).index_add_(
        0, kl.flatten(), folded.w_l[idx].flatten())
    phi = phi / torch.bincount(kl.flatten(), minlength=len(left)).clamp_min(1)
    psi = torch.zeros(len(right), dtype=torch.float64).index_add_(
        0, kr.flatten(), folded.w_r[idx].flatten())
    psi = psi / torch.bincount(kr.flatten(), minlength=len(right)).clamp_min(1)
    gram = left @ right.T
    g = gram[j[:, None], kr]  # [k, n]: ⟨a_i, ρ(z) b_i⟩
    g = g - g.mean(1, keepdim=True)
    kap = (w_u_c[idx] * g).sum(1) / g.pow(2).sum(1).clamp_min(1e-300)
    pair_sum: dict[tuple[int, int], float] = {}
    for p, k in zip(pairs, kap.tolist(), strict=True):
        pair_sum[p] = pair_sum.get(p, 0.0) + k
    kappa = sum(pair_sum.values()) / len(pair_sum)
    shares = torch.tensor([k / pair_sum[p] if abs(pair_sum[p]) > 1e-12 else 1.0
                           for p, k in zip(pairs, kap.tolist(), strict=True)],
                          dtype=torch.float64)
    del n
    return Circuit(irrep=irrep.name, generators=irrep.matrices[group.generator_ids].clone(),
                   left_set=left, right_set=right, neurons=idx, pairs=torch.tensor(pairs),
                   phi=phi, psi=psi, kappa=float(kappa), shares=shares, c=c)


def explain(folded: FoldedWeights, group: FiniteGroup, *, purity_threshold: float = 0.9,
            rank1_threshold: float = 0.9, cluster_cos: float = 0.99, snap_tol: float = 0.05
            ) -> Explanation:
    """Extract ρ-set circuits from a network's weights (brief §6.2, on a real trained model):

    1. irrep assignment: a neuron joins irrep ρ when ≥ ``purity_threshold`` of the centred norm
       of each of w_l, w_r, w_u lies in ρ;
    2. rank-1 Fourier coefficients: C_l ≈ s·a cᵀ, C_r ≈ −s·c bᵀ, C_u ≈ κ·a bᵀ (σ₁²/Σσ² ≥
       ``rank1_threshold``); neurons are clustered by the direction of c (several circuits may
       share an irrep with different c); per cluster c is the top eigenvector of Σ C_lᵀC_l;
    3. a_i = C_l c, b_i = −C_rᵀc (unit), snapped to exact orbits (``snap_tol``);
    4. one circuit per (A-orbit, B-orbit) block; φ, ψ, κ and the shares fitted by least squares;
       the verifier pads missing pairs with virtual neurons.

    Everything else is listed as unexplained. On constructed networks (``construct``) this
    recovers the circuits exactly, up to the (a, b, c) → (−a, −b, −c) symmetry of the form.
    """
    folded.check(group)
    m = folded.n_neurons
    purity, labels, _ = irrep_purity(folded, group)
    by_name = {r.name: r for r in real_irreps(group)}
    w_u_c = folded.w_u - folded.w_u.mean(1, keepdim=True)
    circuits: list[Circuit] = []
    notes: list[str] = []
    for name, irrep in by_name.items():
        members = [i for i in range(m) if labels[i] == name and purity[i] >= purity_threshold]
        if not members:
            continue
        idx = torch.tensor(members)
        cl = coefficients(folded.w_l[idx] - folded.w_l[idx].mean(1, keepdim=True), irrep)
        cr = coefficients(folded.w_r[idx] - folded.w_r[idx].mean(1, keepdim=True), irrep)
        cu = coefficients(w_u_c[idx], irrep)
        ok = torch.ones(len(members), dtype=torch.bool)
        for coef in (cl, cr, cu):
            s = torch.linalg.svdvals(coef)
            ok &= s[:, 0].pow(2) / s.pow(2).sum(1).clamp_min(1e-300) >= rank1_threshold
        vdir = torch.linalg.svd(cl).Vh[:, 0, :]  # [k, d] direction of c per neuron
        # greedy clustering of c directions (up to sign)
        cluster = [-1] * len(members)
        reps: list[torch.Tensor] = []
        for t in range(len(members)):
            if not ok[t]:
                continue
            for ci, r in enumerate(reps):
                if abs(float(r @ vdir[t])) >= cluster_cos:
                    cluster[t] = ci
                    break
            else:
                cluster[t] = len(reps)
                reps.append(vdir[t])
        for ci in range(len(reps)):
            ts = [t for t in range(len(members)) if cluster[t] == ci]
            gram = torch.einsum("kij,kil->jl", cl[ts], cl[ts])
            c = torch.linalg.eigh(gram).eigenvectors[:, -1]
            c = c * (1.0 if float(c[c.abs().argmax()]) > 0 else -1.0)
            a_raw = cl[ts] @ c
            b_raw = -(cr[ts].transpose(1, 2) @ c)
            good = (a_raw.norm(dim=1) > 1e-9) & (b_raw.norm(dim=1) > 1e-9)
            ts = [t for t, g in zip(ts, good.tolist(), strict=True) if g]
            if not ts:
                continue
            a_u = a_raw[good] / a_raw[good].norm(dim=1, keepdim=True)
            b_u = b_raw[good] / b_raw[good].norm(dim=1, keepdim=True)
            a_orbs, a_where = snap_to_orbits(group, irrep, a_u, snap_tol)
            b_orbs, b_where = snap_to_orbits(group, irrep, b_u, snap_tol)
            blocks: dict[tuple[int, int], list[tuple[int, tuple[int, int]]]] = {}
            for t, wa, wb in zip(ts, a_where, b_where, strict=True):
                if wa is None or wb is None:
                    continue
                blocks.setdefault((wa[0], wb[0]), []).append((members[t], (wa[1], wb[1])))
            for (oa, ob), items in sorted(blocks.items()):
                circ = _fit_circuit(group, irrep, folded, w_u_c, a_orbs[oa], b_orbs[ob],
                                    [n for n, _ in items], [p for _, p in items], c)
                if circ is None:
                    notes.append(f"{name}: a snapped orbit is not permuted; block skipped")
                    continue
                circuits.append(circ)
    explained = sorted(int(n) for c in circuits for n in c.neurons.tolist())
    unexplained = sorted(set(range(m)) - set(explained))
    sq = folded.w_l.pow(2).sum(1) + folded.w_r.pow(2).sum(1) + w_u_c.pow(2).sum(1)
    total = float(sq.sum())
    frac_norm = float(sq[explained].sum()) / total if explained and total > 0 else 0.0
    return Explanation(group=group.name, n_neurons=m, circuits=circuits, unexplained=unexplained,
                       fraction_neurons=len(explained) / max(m, 1), fraction_norm=frac_norm,
                       purity=purity, neuron_irrep=labels, notes=notes)


__all__ = ["Circuit", "Explanation", "explain", "irrep_purity", "coefficients", "action",
           "snap_to_orbits", "dedup"]
