"""ρ-sets: finite sets of vectors that every matrix of a representation permutes.

Why: Wu et al. (2024) explain group-composition networks by circuits indexed by pairs (a, b) of a
ρ-set B (ρ(g)B = B for every g). A minimal ρ-set is a single orbit {ρ(g)v}; its size
[G : Stab(v)] fixes how many neurons (|B|²) a circuit needs, which is why the smallest orbit of
each irrep matters (the tetrahedron for S4's standard irrep, the icosahedron for A5's 3-dim).

Everything here is numeric with a tolerance: vectors are compared by Euclidean distance relative
to their norm, because the irreps are computed numerically (``groups.irreps``).
"""

from __future__ import annotations

import torch

from msae_plugin.errors import GroupError
from msae_plugin.groups.finite import FiniteGroup
from msae_plugin.groups.irreps import Irrep, get_irrep


def dedup(points: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """Distinct rows of ``points`` (first occurrence kept, order preserved); rows closer than
    ``tol`` · (1 + largest norm) count as equal."""
    scale = tol * (1.0 + float(points.norm(dim=1).max())) if len(points) else tol
    kept: list[torch.Tensor] = []
    for p in points:
        if not kept or float((torch.stack(kept) - p).norm(dim=1).min()) > scale:
            kept.append(p)
    return torch.stack(kept) if kept else points[:0]


def orbit(irrep: Irrep, v: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """``[k, d]``: the orbit {ρ(g) v : g ∈ G} of ``v``, without duplicates. Row 0 is ``v`` itself
    (the identity comes first), the others follow in element order, so the result is
    deterministic. Closing under the generators gives the same set; applying every matrix is
    cheaper here because the irrep already stores all |G| of them."""
    v = torch.as_tensor(v, dtype=torch.float64)
    if v.shape != (irrep.dim,):
        raise GroupError(f"a vector for the {irrep.dim}-dim irrep {irrep.name!r} must have shape "
                         f"({irrep.dim},), got {tuple(v.shape)}")
    return dedup(irrep.matrices @ v, tol)


def match_points(images: torch.Tensor, points: torch.Tensor, tol: float = 1e-6
                 ) -> torch.Tensor | None:
    """For each row of ``images`` the index of the row of ``points`` within ``tol`` (relative to
    the largest norm) of it, or None when some image has no such row, more than one, or two
    images land on the same row (then the map is not a permutation)."""
    if images.shape != points.shape or len(points) == 0:
        return None
    scale = tol * (1.0 + float(points.norm(dim=1).max()))
    dist = torch.cdist(images, points)
    close = dist <= scale
    if not bool((close.sum(1) == 1).all()):
        return None
    idx = close.float().argmax(1)
    if len(set(idx.tolist())) != len(points):
        return None
    return idx


def is_rho_set(irrep: Irrep, points: torch.Tensor, elements: list[int] | None = None,
               tol: float = 1e-6) -> bool:
    """True when every ρ(g) (g in ``elements``: pass the group's ``generator_ids`` for the cheap
    check; default every element) maps the distinct points of ``points`` onto themselves."""
    points = torch.as_tensor(points, dtype=torch.float64)
    if points.dim() != 2 or points.shape[1] != irrep.dim or len(points) == 0:
        return False
    if len(dedup(points, tol)) != len(points):
        return False  # duplicated points: "permutes" would be ambiguous
    gs = range(len(irrep.matrices)) if elements is None else elements
    return all(match_points(points @ irrep.matrices[g].T, points, tol) is not None for g in gs)


def _null_basis(m: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """Orthonormal basis (columns) of the null space of ``m``."""
    _, s, vh = torch.linalg.svd(m)
    rank = int((s > tol * max(1.0, float(s.max()) if len(s) else 1.0)).sum())
    return vh[rank:].T


def fixed_subspaces(irrep: Irrep, tol: float = 1e-9) -> list[torch.Tensor]:
    """Every non-zero subspace of the form Fix(S) = {v : ρ(g)v = v for g ∈ S}, S a set of
    elements, as orthonormal bases ``[d, k]``. These are the only candidates for the span of a
    stabiliser's fixed vectors, so the smallest orbit is found among them. Built by intersecting
    with one element's fixed space at a time until nothing new appears."""
    mats = irrep.matrices
    d = irrep.dim
    eye = torch.eye(d, dtype=torch.float64)
    found: list[torch.Tensor] = [eye]
    projectors = [eye]
    queue = [eye]
    while queue:
        basis = queue.pop()
        for g in range(1, len(mats)):
            sub = _null_basis((mats[g] - eye) @ basis, tol)
            if sub.shape[1] == 0 or sub.shape[1] == basis.shape[1]:
                continue
            new = basis @ sub
            proj = new @ new.T
            if any(torch.allclose(proj, p, atol=1e-7) for p in projectors):
                continue
            found.append(new)
            projectors.append(proj)
            queue.append(new)
    return found


def stabiliser(irrep: Irrep, v: torch.Tensor, tol: float = 1e-8) -> list[int]:
    """Element ids g with ρ(g) v = v (within ``tol`` relative to |v|)."""
    err = (irrep.matrices @ v - v).norm(dim=1)
    return [int(g) for g in torch.nonzero(err <= tol * (1.0 + float(v.norm()))).flatten()]


def minimal_rho_set(group: FiniteGroup, irrep: Irrep | str, seed: int = 0) -> torch.Tensor:
    """``[k, d]`` unit vectors: a smallest orbit of ``irrep`` (a minimal ρ-set), row 0 the
    generating vector.

    Why this search is complete: the orbit of v has |G|/|Stab(v)| points, and v lies in the fixed
    space of its stabiliser. Every such fixed space is one of ``fixed_subspaces`` and a generic v
    in it is stabilised exactly by the elements fixing the whole subspace; so the smallest orbit
    is the smallest generic orbit over those subspaces. Inside a subspace of dimension > 1 the
    vector is drawn at random (``seed``); the size does not depend on the draw.
    """
    if isinstance(irrep, str):
        irrep = get_irrep(group, irrep)
    if len(irrep.matrices) != group.order:
        raise GroupError(f"irrep {irrep.name!r} has {len(irrep.matrices)} matrices but "
                         f"{group.name} has {group.order} elements")
    gen = torch.Generator().manual_seed(seed)
    best: torch.Tensor | None = None
    for basis in fixed_subspaces(irrep):
        coef = torch.randn(basis.shape[1], generator=gen, dtype=torch.float64)
        v = basis @ coef
        v = v / v.norm()
        size = group.order // len(stabiliser(irrep, v))
        if best is None or size < len(best):
            best = orbit(irrep, v)
    assert best is not None
    return best
