"""Exact ρ-set networks (Wu et al. 2024, research brief §4.2) as ``FoldedWeights`` plus their
ground truth, so the explainer and the verifier can be tested against a known answer.

One circuit, for an irrep ρ, a ρ-set B, a vector c and a scale s, has one neuron per ordered pair
(a, b) ∈ B×B:

    w_l^{(a,b)}(x) = s⟨a, ρ(x)c⟩,   w_r^{(a,b)}(y) = −s⟨c, ρ(y)b⟩,   w_u^{(a,b)}(z) = −s⟨a, ρ(z)b⟩.

Re-indexing a → ρ(x)a, b → ρ(y)⁻¹b shows the logits depend on x⁻¹zy⁻¹ only (bi-equivariance).
The difference form (the minus signs) puts the maximum at z = xy; it is unique when the values
⟨b, c⟩, b ∈ B, are distinct (a generic c). With c ∈ B ties appear (a "coset circuit", ~4 % on
S5); several circuits with c = b_1, …, b_k break the ties (5 circuits: 100 % on S5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from msae_plugin.errors import GroupError
from msae_plugin.groups.explain import Circuit, Explanation
from msae_plugin.groups.finite import FiniteGroup
from msae_plugin.groups.folded import FoldedWeights
from msae_plugin.groups.irreps import Irrep, get_irrep
from msae_plugin.groups.rho_sets import is_rho_set, minimal_rho_set


def circuit_tables(irrep: Irrep, rho_set: torch.Tensor, c: torch.Tensor, scale: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(w_l, w_r, w_u)``, each ``[|B|², |G|]``, of one exact circuit; neuron ``j·|B| + l``
    is the pair (B_j, B_l)."""
    mats = irrep.matrices  # [n, d, d]
    k = len(rho_set)
    left = scale * torch.einsum("jd,nde,e->jn", rho_set, mats, c)  # s⟨a, ρ(x)c⟩
    right = -scale * torch.einsum("d,nde,le->ln", c, mats, rho_set)  # −s⟨c, ρ(y)b⟩
    out = -scale * torch.einsum("jd,nde,le->jln", rho_set, mats, rho_set)  # −s⟨a, ρ(z)b⟩
    w_l = left[:, None, :].expand(k, k, -1).reshape(k * k, -1)
    w_r = right[None, :, :].expand(k, k, -1).reshape(k * k, -1)
    return w_l, w_r, out.reshape(k * k, -1)


def construct_rho_network(
    group: FiniteGroup,
    irrep: Irrep | str = "standard",
    cs: Sequence[torch.Tensor] | torch.Tensor | str | int = "rho_set",
    *,
    rho_set: torch.Tensor | None = None,
    scale: float = 1.0,
    seed: int = 0,
) -> tuple[FoldedWeights, Explanation]:
    """An exact network of one or several ρ-set circuits on disjoint neurons, and its ground
    truth as an :class:`Explanation` (which neurons form which circuit, each neuron's (a, b)).

    ``cs`` chooses each circuit's vector c: a list/``[k, d]`` tensor of vectors; an int k for k
    generic random unit vectors (``seed``); ``"rho_set"`` for one circuit per point of the ρ-set
    (c = b_1, …, b_|B|, the configuration that is exact on S5's standard irrep). ``rho_set``
    defaults to a minimal ρ-set of the irrep; it is checked to be one.
    """
    if isinstance(irrep, str):
        irrep = get_irrep(group, irrep)
    if len(irrep.matrices) != group.order:
        raise GroupError(f"irrep {irrep.name!r} does not belong to {group.name}")
    points = minimal_rho_set(group, irrep) if rho_set is None else torch.as_tensor(
        rho_set, dtype=torch.float64)
    if not is_rho_set(irrep, points, group.generator_ids):
        raise GroupError("the given points are not a ρ-set: some generator does not permute them")
    if isinstance(cs, str):
        if cs != "rho_set":
            raise GroupError(f"cs must be vectors, an int or 'rho_set', got {cs!r}")
        c_list = list(points)
    elif isinstance(cs, int) and not isinstance(cs, bool):
        gen = torch.Generator().manual_seed(seed)
        raw = torch.randn(cs, irrep.dim, generator=gen, dtype=torch.float64)
        c_list = list(raw / raw.norm(dim=1, keepdim=True))
    else:
        c_list = [torch.as_tensor(c, dtype=torch.float64) for c in cs]
    if not c_list or any(c.shape != (irrep.dim,) for c in c_list):
        raise GroupError(f"each c must be a ({irrep.dim},) vector")

    k = len(points)
    gens = irrep.matrices[group.generator_ids].clone()
    tables, circuits = [], []
    pairs = torch.cartesian_prod(torch.arange(k), torch.arange(k))  # row j·k + l = (j, l)
    for idx, c in enumerate(c_list):
        tables.append(circuit_tables(irrep, points, c, scale))
        circuits.append(Circuit(
            irrep=irrep.name,
            generators=gens,
            left_set=points.clone(),
            right_set=points.clone(),
            neurons=torch.arange(idx * k * k, (idx + 1) * k * k),
            pairs=pairs.clone(),
            phi=scale * points @ c,
            psi=-scale * points @ c,
            kappa=-scale,
            shares=torch.ones(k * k, dtype=torch.float64),
            c=c.clone(),
        ))
    folded = FoldedWeights(
        w_l=torch.cat([t[0] for t in tables]).contiguous(),
        w_r=torch.cat([t[1] for t in tables]).contiguous(),
        w_u=torch.cat([t[2] for t in tables]).contiguous(),
    )
    m = folded.n_neurons
    truth = Explanation(group=group.name, n_neurons=m, circuits=circuits, unexplained=[],
                        fraction_neurons=1.0, fraction_norm=1.0)
    return folded, truth
