"""Real irreducible representations of a finite group, computed numerically.

Why numerically: the testbed needs the irreps of S4, S5, A5 (and of any small C_n, D_n), and
hand-written constructions (A5's icosahedral 3-dim irreps, the 5- and 6-dim irreps of S5) are
error-prone. The regular representation contains every real irrep; a random symmetric matrix
averaged over the group commutes with the group action, so its eigenspaces are invariant
subspaces, and for a generic matrix each is one irreducible copy. Restricting the regular
representation to an orthonormal basis of such a subspace gives orthogonal irrep matrices.
Copies with the same character are the same irrep; one copy of each is kept, and every result is
checked to be a homomorphism, orthogonal and irreducible (Σ χ² = |G| · (1 for real type)).

Real irreps: for groups with complex irreps (C_n, n ≥ 3) a pair of conjugate complex irreps
appears as one real irrep of dimension 2 (its Σ χ² is 2|G|); such irreps are flagged
``real_type=False``. S_n, A_5 and D_n have real irreps only up to that caveat (A_n for some n has
complex pairs too).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from msae_plugin.groups.finite import FiniteGroup


@dataclass
class Irrep:
    """``matrices[g]``: the orthogonal ``[d, d]`` matrix of element g (float64)."""

    name: str
    dim: int
    matrices: torch.Tensor  # [n, d, d]
    character: torch.Tensor  # [n]
    real_type: bool = True

    def __call__(self, g: int) -> torch.Tensor:
        return self.matrices[g]


def regular_representation(group: FiniteGroup) -> torch.Tensor:
    """``[n, n, n]``: R(g) e_h = e_{g·h}."""
    n = group.order
    r = torch.zeros(n, n, n, dtype=torch.float64)
    g = torch.arange(n)[:, None].expand(n, n)
    h = torch.arange(n)[None, :].expand(n, n)
    r[g, group.table, h] = 1.0
    return r


def _invariant_subspaces(rep: torch.Tensor, seed: int) -> list[torch.Tensor]:
    n = rep.shape[1]
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    a = a + a.T
    m = torch.einsum("gij,jk,glk->il", rep, a, rep) / rep.shape[0]  # Σ_g R(g) A R(g)^T
    vals, vecs = torch.linalg.eigh(m)
    spaces, start = [], 0
    tol = 1e-7 * max(1.0, float(vals.abs().max()))
    for i in range(1, n + 1):
        if i == n or vals[i] - vals[i - 1] > tol:
            spaces.append(vecs[:, start:i])
            start = i
    return spaces


def _name(group: FiniteGroup, dim: int, chi: torch.Tensor, used: set[str]) -> str:
    n = group.order
    if dim == 1 and torch.allclose(chi, torch.ones(n, dtype=chi.dtype)):
        return "trivial"
    if dim == 1 and torch.allclose(chi, group.sign()):
        return "sign"
    fixed = group.permutation_matrices().diagonal(dim1=1, dim2=2).sum(-1) - 1
    if dim == group.degree - 1 and torch.allclose(chi, fixed, atol=1e-8):
        return "standard"
    if dim == group.degree - 1 and torch.allclose(chi, fixed * group.sign(), atol=1e-8):
        return "standard_sign"
    k = 1
    while f"dim{dim}_{k}" in used:
        k += 1
    return f"dim{dim}_{k}"


@cache
def _irreps_cached(name: str, degree: int, gens: tuple, seed: int) -> tuple[Irrep, ...]:
    group = FiniteGroup(name, degree, list(gens))
    rep = regular_representation(group)
    found: list[Irrep] = []
    used: set[str] = set()
    for basis in _invariant_subspaces(rep, seed):
        mats = basis.T @ rep @ basis  # [n, d, d]
        chi = mats.diagonal(dim1=1, dim2=2).sum(-1)
        if any(torch.allclose(chi, other.character, atol=1e-6) for other in found):
            continue
        norm = float((chi * chi).sum()) / group.order  # 1: real type, 2: complex pair, 4: quaternionic
        name_ = _name(group, basis.shape[1], chi, used)
        used.add(name_)
        found.append(Irrep(name_, basis.shape[1], mats, chi, real_type=round(norm) == 1))
    found.sort(key=lambda r: (r.dim, r.name != "trivial", r.name))
    return tuple(found)


def real_irreps(group: FiniteGroup, seed: int = 0) -> list[Irrep]:
    """Every real irrep of ``group`` (one per character), smallest dimension first."""
    irreps = list(_irreps_cached(group.name, group.degree, tuple(group.generators), seed))
    check = sum(r.dim ** 2 / (1 if r.real_type else 2) for r in irreps)
    if abs(check - group.order) > 1e-6:
        raise RuntimeError(f"irrep decomposition of {group.name} incomplete ({check} vs "
                           f"{group.order}); retry with another seed")
    return irreps


def get_irrep(group: FiniteGroup, name: str) -> Irrep:
    """An irrep by name (``standard``, ``sign``, ``dim3_1``...); unknown names list the valid."""
    irreps = real_irreps(group)
    for r in irreps:
        if r.name == name:
            return r
    from msae_plugin.errors import GroupError
    from msae_plugin.names import suggest

    names = [r.name for r in irreps]
    raise GroupError(f"{group.name} has no irrep {name!r}.{suggest(name, names)} Its real irreps: "
                     f"{names}")
