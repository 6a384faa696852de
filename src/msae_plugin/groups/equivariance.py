"""How close a group-composition network is to the ρ-set / bi-equivariant form of Wu et al. 2024.

The paper's exact metrics are not available (see docs/groups.md); these are cheap, exact
measurements consistent with its claims, computed over the whole input space:

* **logit bi-equivariance R²**: an ideal network's logits depend only on ``g = x⁻¹·z·y⁻¹``
  (``f(z | x, y) = F(g)``). Centre the logits per input, average them over each class ``g`` to get
  ``F``, and report ``R² = 1 - ‖L̂ - F(x⁻¹zy⁻¹)‖² / ‖L̂‖²`` (1 exactly for an ideal network), whether
  ``argmax F`` is the identity, and the ideal margin ``F(e) - max_{g≠e} F(g)``;
* **equivariance in each argument**: left, ``x → g·x`` with ``z → g·z``; right, ``y → y·h`` with
  ``z → z·h``. Reported as the cosine between the centred logits and their translate, averaged
  over the group elements (1: exactly equivariant; the two together are bi-equivariance);
* **irrep purity** of each neuron's ``w_l``, ``w_r``, ``w_u`` table: the share of its norm in the
  span of one irrep's matrix entries, and the rank-1 share ``σ₁²/Σσ²`` of its Fourier coefficient
  ``C = (d/|G|) Σ_x w(x) ρ(x)`` (rank 1 ⇔ the table is ``⟨a, ρ(x) c⟩``, the ρ-set form);
* **coset concentration** (Stander et al. 2024): the smallest within-coset share of a table's
  variance over the cosets of the given subgroups (0: constant on cosets).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from msae_plugin.groups.brute_force import _as_folded
from msae_plugin.groups.finite import FiniteGroup
from msae_plugin.groups.folded import FoldedWeights
from msae_plugin.groups.irreps import Irrep, real_irreps


def all_logits(folded: FoldedWeights, group: FiniteGroup) -> torch.Tensor:
    """``[|G|, |G|, |G|]`` float64 logits indexed ``[x, y, z]``."""
    folded.check(group)
    n = group.order
    ids = torch.arange(n * n)
    return folded.logits(ids // n, ids % n).reshape(n, n, n)


def _centred(model_or_folded, group: FiniteGroup | None) -> tuple[torch.Tensor, FiniteGroup]:
    folded, group = _as_folded(model_or_folded, group)
    logits = all_logits(folded, group)
    return logits - logits.mean(-1, keepdim=True), group


@dataclass
class BiEquivariance:
    """``F[g]``: the class means of the centred logits over ``g = x⁻¹·z·y⁻¹``."""

    r2: float
    F: torch.Tensor
    argmax_is_identity: bool
    ideal_margin: float


def biequivariance_classes(group: FiniteGroup) -> torch.Tensor:
    """``[x, y, z]`` long: the id of ``x⁻¹·z·y⁻¹``."""
    t, inv = group.table, group.inverse
    left = t[inv][:, None, :]  # [x, 1, z]: x⁻¹·z
    return t[left.expand(-1, group.order, -1), inv[None, :, None].expand(group.order, -1,
                                                                          group.order)]


def logit_biequivariance(model_or_folded, group: FiniteGroup | None = None) -> BiEquivariance:
    """The R² of the centred logits against their best function of ``x⁻¹·z·y⁻¹`` (see module)."""
    lhat, group = _centred(model_or_folded, group)
    n = group.order
    k = biequivariance_classes(group).reshape(-1)
    flat = lhat.reshape(-1)
    F = torch.zeros(n, dtype=torch.float64).index_add_(0, k, flat) / (n * n)
    total = float((flat ** 2).sum())
    resid = float(((flat - F[k]) ** 2).sum())
    r2 = 1.0 - resid / total if total > 0 else float("nan")
    others = torch.cat([F[:0], F[1:]])  # identity is element 0
    return BiEquivariance(r2, F, int(F.argmax()) == group.identity,
                          float(F[0] - others.max()))


@dataclass
class ArgumentEquivariance:
    """Mean cosine between the centred logits and their left / right translates, and per element."""

    left: float
    right: float
    left_per_element: torch.Tensor
    right_per_element: torch.Tensor
    elements: list[int]


def argument_equivariance(model_or_folded, group: FiniteGroup | None = None,
                          elements: list[int] | None = None) -> ArgumentEquivariance:
    """Left: ``L̂[g·x, y, g·z]`` vs ``L̂[x, y, z]``; right: ``L̂[x, y·h, z·h]`` vs ``L̂[x, y, z]``;
    over ``elements`` (default: every non-identity element up to order 60, the generators
    beyond: each element costs two gathers of the ``|G|³`` logits, 12 s for all of S5)."""
    lhat, group = _centred(model_or_folded, group)
    t = group.table
    if elements is None:
        elements = list(range(1, group.order)) if group.order <= 60 else group.generator_ids
    elements = list(elements)
    norm = float((lhat ** 2).sum())
    left, right = [], []
    for g in elements:
        moved_l = lhat[t[g]][:, :, t[g]]  # [x, y, z] -> L̂[g·x, y, g·z]
        moved_r = lhat[:, t[:, g]][:, :, t[:, g]]  # L̂[x, y·g, z·g]
        left.append(float((moved_l * lhat).sum()) / norm)
        right.append(float((moved_r * lhat).sum()) / norm)
    lt, rt = torch.tensor(left, dtype=torch.float64), torch.tensor(right, dtype=torch.float64)
    return ArgumentEquivariance(float(lt.mean()), float(rt.mean()), lt, rt, elements)


@cache
def _span_bases(name: str, degree: int, gens: tuple) -> tuple[tuple[str, ...], tuple]:
    group = FiniteGroup(name, degree, list(gens))
    irreps = real_irreps(group)
    bases = []
    for r in irreps:
        m = r.matrices.reshape(group.order, -1)  # [n, d²]: the matrix-entry functions
        u, s, _ = torch.linalg.svd(m, full_matrices=False)
        bases.append(u[:, s > 1e-9 * float(s.max())].contiguous())  # orthonormal span
    return tuple(r.name for r in irreps), tuple(bases)


def irrep_span_bases(group: FiniteGroup) -> tuple[list[str], list[torch.Tensor]]:
    """Per real irrep: its name and an orthonormal ``[|G|, r]`` basis of the span of its matrix
    entries (``r = d²`` for real-type irreps). The spans are mutually orthogonal and together
    span every function on G."""
    names, bases = _span_bases(group.name, group.degree, tuple(group.generators))
    return list(names), list(bases)


@dataclass
class IrrepPurity:
    """Per neuron: ``fractions[i, k]`` share of the table's norm² in irrep ``names[k]`` (the
    trivial one included); ``top[i]`` the index of the largest non-trivial share; ``purity[i]``
    that share (of the non-trivial norm when ``exclude_trivial``); ``rank1[i]`` the rank-1 share
    of the top irrep's Fourier coefficient."""

    names: list[str]
    fractions: torch.Tensor
    top: torch.Tensor
    purity: torch.Tensor
    rank1: torch.Tensor

    def top_names(self) -> list[str]:
        return [self.names[int(k)] for k in self.top]

    def count(self, irrep: str, threshold: float = 0.9, rank1: float | None = None) -> int:
        """Neurons whose top irrep is ``irrep`` with purity above ``threshold`` (and, if given,
        rank-1 share above ``rank1``)."""
        k = self.names.index(irrep)
        ok = (self.top == k) & (self.purity > threshold)
        if rank1 is not None:
            ok &= self.rank1 > rank1
        return int(ok.sum())


def irrep_purity(table: torch.Tensor, group: FiniteGroup, exclude_trivial: bool = True
                 ) -> IrrepPurity:
    """Irrep purity and rank-1 share of each row of ``table`` ``[m, |G|]`` (see module).

    ``exclude_trivial``: measure purity against the non-trivial norm. The trivial part (the
    table's mean) of ``w_u`` never changes an argmax, and that of ``w_l``/``w_r`` is only a
    neuron threshold, so it should not count against a neuron's irrep.
    """
    table = table.double()
    names, bases = irrep_span_bases(group)
    energy = torch.stack([((table @ q) ** 2).sum(-1) for q in bases], dim=1)  # [m, k]
    total = (table ** 2).sum(-1, keepdim=True).clamp_min(1e-300)
    fractions = energy / total
    trivial = names.index("trivial")
    masked = energy.clone()
    masked[:, trivial] = -1.0
    top = masked.argmax(1)
    denom = (total[:, 0] - energy[:, trivial]) if exclude_trivial else total[:, 0]
    purity = energy.gather(1, top[:, None])[:, 0] / denom.clamp_min(1e-300)
    irreps = real_irreps(group)
    rank1 = torch.empty(table.shape[0], dtype=torch.float64)
    for k in top.unique().tolist():
        r: Irrep = irreps[k]
        rows = (top == k).nonzero()[:, 0]
        coef = torch.einsum("mx,xij->mij", table[rows], r.matrices) * (r.dim / group.order)
        s = torch.linalg.svdvals(coef) ** 2
        rank1[rows] = s[:, 0] / s.sum(-1).clamp_min(1e-300)
    return IrrepPurity(names, fractions, top, purity, rank1)


def neuron_purity(model_or_folded, group: FiniteGroup | None = None,
                  exclude_trivial: bool = True) -> dict[str, IrrepPurity]:
    """:func:`irrep_purity` of the ``w_l``, ``w_r`` and ``w_u`` tables."""
    folded, group = _as_folded(model_or_folded, group)
    return {side: irrep_purity(getattr(folded, side), group, exclude_trivial)
            for side in ("w_l", "w_r", "w_u")}


def point_stabilisers(group: FiniteGroup) -> list[list[int]]:
    """The stabiliser of each point of the permutation action (S_{n-1} in S_n, A_{n-1} in A_n)."""
    return [[g for g, p in enumerate(group.perms) if p[i] == i] for i in range(group.degree)]


def coset_concentration(table: torch.Tensor, group: FiniteGroup,
                        subgroups: list[list[int]] | None = None) -> torch.Tensor:
    """``[m]``: per row of ``table`` ``[m, |G|]``, the smallest within-coset share of its variance
    over the left (``gH``) and right (``Hg``) cosets of each subgroup (default: the point
    stabilisers). 0: constant on the cosets of some subgroup; ~1 - |cosets|/|G|: no structure."""
    table = table.double()
    subgroups = point_stabilisers(group) if subgroups is None else subgroups
    t = group.table
    centred = table - table.mean(-1, keepdim=True)
    total = (centred ** 2).sum(-1).clamp_min(1e-300)
    best = torch.full((table.shape[0],), float("inf"), dtype=torch.float64)
    for h in subgroups:
        hh = torch.tensor(h)
        for cosets in (t[:, hh], t[hh, :].T):  # row g: gH (left) / Hg (right)
            label = torch.full((group.order,), -1, dtype=torch.long)
            for c, members in enumerate(cosets.tolist()):
                if label[members[0]] < 0:
                    label[members] = c
            k = int(label.max()) + 1
            sums = torch.zeros(table.shape[0], k, dtype=torch.float64).index_add_(1, label, table)
            counts = torch.bincount(label, minlength=k).double()
            within = ((table - (sums / counts)[:, label]) ** 2).sum(-1)
            best = torch.minimum(best, within / total)
    return best


def equivariance_report(model_or_folded, group: FiniteGroup | None = None,
                        threshold: float = 0.9) -> dict:
    """A JSON-able summary: bi-equivariance R², argmax/margin of F, left/right equivariance and,
    per irrep, how many neurons are > ``threshold`` pure in all three tables (and rank-1 > 0.9)."""
    folded, group = _as_folded(model_or_folded, group)
    bi = logit_biequivariance(folded, group)
    arg = argument_equivariance(folded, group)
    pur = neuron_purity(folded, group)
    same = (pur["w_l"].top == pur["w_r"].top) & (pur["w_l"].top == pur["w_u"].top)
    pure = same & torch.stack([p.purity > threshold for p in pur.values()]).all(0)
    rank1 = pure & torch.stack([p.rank1 > 0.9 for p in pur.values()]).all(0)
    names = pur["w_l"].names
    per_irrep = {
        names[k]: {"pure_all_three": int((pure & (pur["w_l"].top == k)).sum()),
                   "pure_rank1_all_three": int((rank1 & (pur["w_l"].top == k)).sum())}
        for k in range(len(names)) if names[k] != "trivial"
    }
    return {
        "group": group.name, "n_neurons": folded.n_neurons,
        "biequivariance_r2": bi.r2, "argmax_F_is_identity": bi.argmax_is_identity,
        "ideal_margin": bi.ideal_margin,
        "left_equivariance": arg.left, "right_equivariance": arg.right,
        "purity_threshold": threshold, "neurons_by_irrep": per_irrep,
        "median_purity": {s: float(p.purity.median()) for s, p in pur.items()},
    }
