"""A sound lower bound on a group-composition network's accuracy from a ρ-set explanation
(Wu et al. 2024; research brief §6.2, our reconstruction: the paper's exact lemma is unverified).

The bound must hold for ANY explanation, right or wrong, so nothing in it is trusted:

1. **Check.** The group name and shapes match; every circuit's ρ, built from its generator
   matrices by breadth-first search over the group, is orthogonal and a homomorphism; each
   generator permutes A and B, and the induced permutation actions are homomorphisms (exact
   integer check). A failed check gives bound 0 with a reason. Pairs of A×B without a neuron are
   padded with virtual neurons (actual weights 0, so the network is unchanged).
2. **Ideal model** w̃ from the explanation (see ``explain``). The output table is the Gram table
   ⟨A_j, B_l⟩ averaged over the diagonal G-action, so it is exactly invariant, and the ideal
   logits are exactly bi-equivariant: f̃(z|x,y) = F̃(x⁻¹zy⁻¹).
3. **Ideal margin** μ = F̃(e) − max_{g≠e} F̃(g) from |G| evaluations.
4. **Error per input**, with ranges over z (a constant shift of an output row never changes the
   argmax, so ranges rather than 2·max): e(x,y) = Σ_i rg(w̃_u^i)|h_i − h̃_i| + Σ_i rg(δ_u^i) h_i.
   - tier ``"B"`` (O(m|G|) + a |G|² count): |h − h̃| ≤ |δ_l(x)| + |δ_r(y)|, and per circuit
     Σ rg·h̃ ≤ max rg · Σ_pairs h̃(e,e) (that sum is the same for every input);
   - tier ``"A"`` (O(m|G|²)): exact actual h and ideal h̃, never the |G|³ unembedding;
   - tier ``"C"`` with ``rank`` r: the logits of (actual h) × (ideal W̃_U) exactly, in irrep form
     tr(ρ(z)·Σ_i h_i κ_i b_i a_iᵀ), plus the top-r singular components of the residual
     W_U − W̃_U exactly; only the remainder is bounded, by Σ_i h_i rg(R_rest^i). Tier C's
     decomposition is an identity for any W̃_U, so it is sound even without step 2's structure.
5. **Certify** (x, y) when the lower bound on logit(xy) − max_{z≠xy} logit(z) exceeds a
   floating-point slack (ties count as wrong, like brute force). Bound = certified / |G|².

The unembedding bias is kept exact. ``oracle=True`` also reports the bound from μ against the
exact error range (a brute-force cost), which tells a loose bound from a wrong explanation.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from msae_plugin.errors import GroupError
from msae_plugin.groups.explain import Circuit, Explanation
from msae_plugin.groups.finite import FiniteGroup
from msae_plugin.groups.folded import FoldedWeights
from msae_plugin.groups.rho_sets import match_points

TIERS = ("A", "B", "C")
#: float64 elements of one hidden-layer table chunk (128 MiB)
_CHUNK_ELEMENTS = 2**24
#: relative floating-point slack: a margin must exceed this times the logit scale
SLACK = 1e-8


@dataclass
class VerificationResult:
    bound: float
    seconds: float
    tier: str
    ideal_margin: float | None
    oracle_bound: float | None
    n_certified: int
    n_inputs: int
    valid: bool = True
    reason: str = ""
    rank: int = 0
    n_virtual: int = 0
    details: dict[str, float] = field(default_factory=dict)


@dataclass
class _Ideal:
    """Extended neuron set (real neurons first, then virtual ones) with ideal index tables."""

    rows: torch.Tensor  # [M] real neuron id, or -1 for virtual
    w_l: torch.Tensor  # [M, n] ideal tables
    w_r: torch.Tensor
    w_u: torch.Tensor
    circuit: torch.Tensor  # [M] circuit index (−1: unexplained)
    pair_id: torch.Tensor  # [M] global pair id (−1: unexplained)
    n_virtual: int
    rho: list[torch.Tensor]  # per circuit [n, d, d]
    vec_a: torch.Tensor  # [M, d_max] (zero padded), for the irrep-form logits
    vec_b: torch.Tensor


def _extend(group: FiniteGroup, identity: Any, step: Any) -> list:
    """The value of every element from the identity's and one ``step(value_of_g, t)`` per
    generator t (value of g·s_t), by breadth-first search over the Cayley graph. Whether the
    result is a homomorphism is the caller's check."""
    out: list = [None] * group.order
    out[0] = identity
    queue = deque([0])
    rows = group.table.tolist()
    while queue:
        g = queue.popleft()
        for t, s in enumerate(group.generator_ids):
            h = rows[g][s]
            if out[h] is None:
                out[h] = step(out[g], t)
                queue.append(h)
    return out


def _bfs_rho(group: FiniteGroup, gens: torch.Tensor) -> torch.Tensor | None:
    """ρ(g) for every g from the generator matrices (ρ(g·s) = ρ(g)ρ(s)), or None if that is not a
    homomorphism / not orthogonal."""
    d = gens.shape[-1]
    eye = torch.eye(d, dtype=torch.float64)
    if not all(torch.allclose(s @ s.T, eye, atol=1e-8) for s in gens):
        return None
    table = group.table
    mats = torch.stack(_extend(group, eye, lambda m, k: m @ gens[k]))
    gid = torch.tensor(group.generator_ids)
    prod = mats[:, None] @ gens[None]  # [n, k, d, d]
    if not torch.allclose(prod, mats[table[:, gid]], atol=1e-7):
        return None
    return mats


def _perm_action(group: FiniteGroup, gens: torch.Tensor, points: torch.Tensor
                 ) -> torch.Tensor | None:
    """``[n, k]`` permutation action on the points' indices, from the generators; None unless
    each generator permutes the points and the action is a homomorphism."""
    gp = []
    for s in gens:
        idx = match_points(points @ s.T, points)
        if idx is None:
            return None
        gp.append(idx)
    k = len(points)
    table = group.table
    perm = torch.stack(_extend(group, torch.arange(k), lambda a, t: a[gp[t]]))
    for t, s in enumerate(group.generator_ids):
        if not torch.equal(perm[:, gp[t]], perm[table[:, s]]):
            return None
    return perm


def _check_structure(folded: FoldedWeights, group: FiniteGroup, exp: Explanation) -> None:
    folded.check(group)
    if not isinstance(exp, Explanation):
        raise GroupError(f"expected an Explanation, got {type(exp).__name__}")
    exp.check_group(group)
    if exp.n_neurons != folded.n_neurons:
        raise GroupError(f"the explanation describes {exp.n_neurons} neurons, the network has "
                         f"{folded.n_neurons}")
    seen: set[int] = set()
    ngen = len(group.generator_ids)
    for ci, c in enumerate(exp.circuits):
        if not isinstance(c, Circuit):
            raise GroupError(f"circuit {ci} is not a Circuit")
        d = c.generators.shape[-1] if c.generators.dim() == 3 else -1
        if c.generators.shape != (ngen, d, d):
            raise GroupError(f"circuit {ci}: generators must be [{ngen}, d, d] (one per generator "
                             f"of {group.name}), got {tuple(c.generators.shape)}")
        for name, pts in (("left_set", c.left_set), ("right_set", c.right_set)):
            if pts.dim() != 2 or pts.shape[1] != d or len(pts) == 0:
                raise GroupError(f"circuit {ci}: {name} must be [k, {d}]")
        k = len(c.neurons)
        if c.pairs.shape != (k, 2) or c.shares.shape != (k,):
            raise GroupError(f"circuit {ci}: pairs [k, 2] and shares [k] must match neurons")
        if c.phi.shape != (len(c.left_set),) or c.psi.shape != (len(c.right_set),):
            raise GroupError(f"circuit {ci}: phi/psi must have one value per ρ-set point")
        if k and (int(c.pairs[:, 0].min()) < 0 or int(c.pairs[:, 0].max()) >= len(c.left_set)
                  or int(c.pairs[:, 1].min()) < 0
                  or int(c.pairs[:, 1].max()) >= len(c.right_set)):
            raise GroupError(f"circuit {ci}: a pair index is out of range")
        for nid in c.neurons.tolist():
            if not 0 <= nid < folded.n_neurons:
                raise GroupError(f"circuit {ci}: neuron {nid} out of range")
            if nid in seen:
                raise GroupError(f"neuron {nid} is claimed by two circuits")
            seen.add(nid)
        for t in (c.generators, c.left_set, c.right_set, c.phi, c.psi, c.shares):
            if not bool(torch.isfinite(t).all()):
                raise GroupError(f"circuit {ci}: non-finite values")
        if not torch.isfinite(torch.tensor(float(c.kappa))):
            raise GroupError(f"circuit {ci}: non-finite kappa")


def _build_ideal(folded: FoldedWeights, group: FiniteGroup, exp: Explanation
                 ) -> tuple[_Ideal | None, str]:
    n, m = group.order, folded.n_neurons
    inv = group.inverse
    rows, circ_of, pair_of = [], [], []
    wl, wr, wu, va, vb, rhos = [], [], [], [], [], []
    dmax = max([c.generators.shape[-1] for c in exp.circuits], default=1)
    pair_base = 0
    virtual = 0
    cache: dict[bytes, torch.Tensor | None] = {}
    for ci, c in enumerate(exp.circuits):
        gens = c.generators.to(torch.float64)
        key = gens.numpy().tobytes()
        if key not in cache:
            cache[key] = _bfs_rho(group, gens)
        rho = cache[key]
        if rho is None:
            return None, f"circuit {ci}: the generator matrices are not an orthogonal " \
                         f"representation of {group.name}"
        pa = _perm_action(group, gens, c.left_set.to(torch.float64))
        pb = _perm_action(group, gens, c.right_set.to(torch.float64))
        if pa is None or pb is None:
            return None, f"circuit {ci}: its ρ-set is not closed under the generators " \
                         "(some generator does not permute it)"
        rhos.append(rho)
        p, q = len(c.left_set), len(c.right_set)
        # output table: Gram averaged over the diagonal action, exactly invariant
        gram = c.left_set.to(torch.float64) @ c.right_set.to(torch.float64).T
        omega = gram[pa[:, :, None], pb[:, None, :]].mean(0)  # [p, q]
        js = c.pairs[:, 0].tolist()
        ls = c.pairs[:, 1].tolist()
        members: dict[tuple[int, int], list[int]] = {}
        for t, key in enumerate(zip(js, ls, strict=True)):
            members.setdefault(key, []).append(t)
        shares = c.shares.to(torch.float64).clone()
        for ts in members.values():
            tot = float(shares[ts].sum())
            if abs(tot) < 1e-12 or not torch.isfinite(shares[ts]).all():
                shares[ts] = 1.0 / len(ts)
            else:
                shares[ts] = shares[ts] / tot
        entries = [(int(nid), js[t], ls[t], float(shares[t]))
                   for t, nid in enumerate(c.neurons.tolist())]
        for j in range(p):
            for ll in range(q):
                if (j, ll) not in members:
                    entries.append((-1, j, ll, 1.0))
                    virtual += 1
        nid_t = torch.tensor([e[0] for e in entries])
        j_t = torch.tensor([e[1] for e in entries])
        l_t = torch.tensor([e[2] for e in entries])
        sh_t = torch.tensor([e[3] for e in entries], dtype=torch.float64)
        rows.extend(nid_t.tolist())
        circ_of.extend([ci] * len(entries))
        pair_of.extend((pair_base + j_t * q + l_t).tolist())
        wl.append(c.phi.to(torch.float64)[pa[inv][:, j_t]].T)  # φ(π_{x⁻¹}(j))
        wr.append(c.psi.to(torch.float64)[pb[:, l_t]].T)  # ψ(π_y(l))
        wu.append(float(c.kappa) * sh_t[:, None] * omega[j_t[:, None], pb[:, l_t].T])
        d = c.left_set.shape[1]
        a = torch.zeros(len(entries), dmax, dtype=torch.float64)
        b = torch.zeros(len(entries), dmax, dtype=torch.float64)
        a[:, :d] = c.left_set.to(torch.float64)[j_t]
        b[:, :d] = c.right_set.to(torch.float64)[l_t] * (float(c.kappa) * sh_t[:, None])
        va.append(a)
        vb.append(b)
        pair_base += p * q
    explained = {r for r in rows if r >= 0}
    rest = [i for i in range(m) if i not in explained]
    if rest:
        rows.extend(rest)
        circ_of.extend([-1] * len(rest))
        pair_of.extend([-1] * len(rest))
        zero = torch.zeros(len(rest), n, dtype=torch.float64)
        wl.append(zero)
        wr.append(zero)
        wu.append(zero)
        va.append(torch.zeros(len(rest), dmax, dtype=torch.float64))
        vb.append(torch.zeros(len(rest), dmax, dtype=torch.float64))
    return _Ideal(
        rows=torch.tensor(rows, dtype=torch.long), w_l=torch.cat(wl), w_r=torch.cat(wr),
        w_u=torch.cat(wu), circuit=torch.tensor(circ_of, dtype=torch.long),
        pair_id=torch.tensor(pair_of, dtype=torch.long), n_virtual=virtual,
        rho=rhos, vec_a=torch.cat(va), vec_b=torch.cat(vb),
    ), ""


def _actual(folded: FoldedWeights, ideal: _Ideal) -> tuple[torch.Tensor, ...]:
    """Actual tables on the extended neuron set (virtual rows are zero), w_u centred per row."""
    real = torch.nonzero(ideal.rows >= 0).flatten()
    src = ideal.rows[real]
    out = []
    for t in (folded.w_l, folded.w_r, folded.w_u):
        full = torch.zeros(len(ideal.rows), folded.n_elements, dtype=torch.float64)
        full[real] = t[src].to(torch.float64)
        out.append(full)
    return out[0], out[1], out[2] - out[2].mean(1, keepdim=True)


def _range(t: torch.Tensor) -> torch.Tensor:
    return t.max(1).values - t.min(1).values


def _bias_margin(folded: FoldedWeights, group: FiniteGroup) -> torch.Tensor:
    """``[n]``: b(z*) − max_{z≠z*} b(z), the exact bias contribution to the margin at z*."""
    n = group.order
    if folded.bias is None or n < 2:
        return torch.zeros(n, dtype=torch.float64)
    b = folded.bias.to(torch.float64)
    top = b.topk(2)
    other = torch.full((n,), float(top.values[0]), dtype=torch.float64)
    other[int(top.indices[0])] = float(top.values[1])
    return b - other


def _ideal_F(ideal: _Ideal, group: FiniteGroup) -> torch.Tensor:
    h0 = torch.relu(ideal.w_l[:, 0] + ideal.w_r[:, 0])
    return h0 @ ideal.w_u  # [n]: F̃(g)


def verify(folded: FoldedWeights, group: FiniteGroup, explanation: Explanation, tier: str = "A",
           *, rank: int = 0, oracle: bool = False, chunk: int | None = None
           ) -> VerificationResult:
    """A certified lower bound on the accuracy of ``folded`` over all |G|² inputs (ties wrong).

    Raises GroupError for structurally malformed input (another group, wrong shapes, a neuron in
    two circuits); returns bound 0 with ``valid=False`` and a reason when the explanation's claims
    are false (not a representation, a ρ-set not closed under the generators)."""
    if tier not in TIERS:
        raise GroupError(f"unknown tier {tier!r}; use one of {TIERS} (C takes rank=r)")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise GroupError(f"rank must be a non-negative int, got {rank!r}")
    t0 = time.perf_counter()
    _check_structure(folded, group, explanation)
    n = group.order
    n_inputs = n * n
    ideal, reason = _build_ideal(folded, group, explanation)
    if ideal is None:
        return VerificationResult(0.0, time.perf_counter() - t0, tier, None, None, 0, n_inputs,
                                  valid=False, reason=reason, rank=rank)
    # rows of x per chunk: a fragmented explanation pads to many virtual neurons (up to |G|² per
    # circuit), so the [rows, |G|, neurons] hidden tables are capped at _CHUNK_ELEMENTS each
    chunk = chunk or max(1, min(n, _CHUNK_ELEMENTS // (n * len(ideal.rows))))
    a_l, a_r, a_u = _actual(folded, ideal)
    table = group.table
    inv = group.inverse
    bmargin = _bias_margin(folded, group)
    F = _ideal_F(ideal, group)
    mu = float(F[0] - torch.cat([F[1:], F.new_full((1,), -float("inf"))]).max()) if n > 1 \
        else float("inf")
    scale_ref = 1.0 + float(F.abs().max())
    details: dict[str, float] = {}
    certified = 0
    if tier in ("A", "B"):
        if not mu > 0:
            return VerificationResult(0.0, time.perf_counter() - t0, tier, mu, None, 0, n_inputs,
                                      reason="ideal margin ≤ 0: the explained circuits do not put "
                                      "the maximum at x·y", rank=rank,
                                      n_virtual=ideal.n_virtual)
        rg_ideal = _range(ideal.w_u)  # [M]
        rg_delta = _range(a_u - ideal.w_u)
        virtual = ideal.rows < 0
        b_abs = float(folded.bias.abs().max()) if folded.bias is not None else 0.0
        # the logits are at most |F̃| + error + |bias| in size: the slack scales with them
        slack0 = SLACK * (scale_ref + b_abs + float((rg_ideal + rg_delta).sum()))
        if tier == "B":
            dl = (a_l - ideal.w_l).abs()  # [M, n]
            dr = (a_r - ideal.w_r).abs()
            coef = torch.where(virtual, torch.zeros_like(rg_ideal), rg_ideal + rg_delta)
            ax = coef @ dl  # [n]
            by = coef @ dr
            # Σ_i rg(δ_u^i)·h̃_i (virtual: rg(w̃_u^i)·h̃_i) ≤ Σ_circuits max_pair γ · Σ_pairs h̃(e,e)
            gamma = torch.where(virtual, rg_ideal, rg_delta)
            h0 = torch.relu(ideal.w_l[:, 0] + ideal.w_r[:, 0])
            const = 0.0
            for ci in range(len(explanation.circuits)):
                sel = ideal.circuit == ci
                pid = ideal.pair_id[sel]
                uniq, inv_p = torch.unique(pid, return_inverse=True)
                g_pair = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv_p,
                                                                               gamma[sel])
                h_pair = torch.zeros(len(uniq), dtype=torch.float64)
                h_pair[inv_p] = h0[sel]
                const += float(g_pair.max()) * float(h_pair.sum())
            err = ax[:, None] + by[None, :] + const  # [x, y]
            lower = mu + bmargin[table] - err
            certified = int((lower > slack0 + SLACK * err).sum())
            details.update(hidden_error_max=float((ax[:, None] + by[None, :]).max()),
                           unembed_const=const)
        else:
            a_lt, a_rt = a_l.T.contiguous(), a_r.T.contiguous()
            i_lt, i_rt = ideal.w_l.T.contiguous(), ideal.w_r.T.contiguous()
            for x0 in range(0, n, chunk):
                xs = torch.arange(x0, min(n, x0 + chunk))
                h = torch.relu(a_lt[xs, None, :] + a_rt[None, :, :])  # [cx, n, M]
                ht = torch.relu(i_lt[xs, None, :] + i_rt[None, :, :])
                err = (h - ht).abs_() @ rg_ideal + h @ rg_delta  # [cx, n]
                lower = mu + bmargin[table[xs]] - err
                certified += int((lower > slack0 + SLACK * err).sum())
    else:  # tier C_r: only real neurons matter (a virtual neuron's actual h is 0)
        real = torch.nonzero(ideal.rows >= 0).flatten()
        groups: dict[int, list[int]] = {}
        for ci, rho in enumerate(ideal.rho):  # circuits sharing ρ share one trace
            groups.setdefault(id(rho), []).append(ci)
        circ = ideal.circuit[real]
        k_cols, r_rows = [], []
        for cis in groups.values():
            rho = ideal.rho[cis[0]]
            d = rho.shape[-1]
            member = torch.isin(circ, torch.tensor(cis)).to(torch.float64)[:, None]
            va = ideal.vec_a[real, :d] * member
            k_cols.append(torch.einsum("ij,ik->ijk", va, ideal.vec_b[real, :d]).reshape(-1, d * d))
            r_rows.append(rho.reshape(n, d * d).T)  # vec(ρ(z)): tr(ρ(z)·b aᵀ) = aᵀρ(z)b
        k_all = torch.cat(k_cols, 1) if k_cols else torch.zeros(len(real), 0, dtype=torch.float64)
        r_all = torch.cat(r_rows, 0) if r_rows else torch.zeros(0, n, dtype=torch.float64)
        resid = a_u[real] - k_all @ r_all  # W_U − W̃_U on the real neurons
        r = min(rank, min(resid.shape))
        if r > 0:
            u, s, vh = torch.linalg.svd(resid, full_matrices=False)
            k_all = torch.cat([k_all, u[:, :r] * s[:r]], 1)
            r_all = torch.cat([r_all, vh[:r]], 0)
            rest = resid - (u[:, :r] * s[:r]) @ vh[:r]
        else:
            rest = resid
        rg_rest = _range(rest)
        k_all, r_all = k_all.contiguous(), r_all.contiguous()
        bias = folded.bias.to(torch.float64) if folded.bias is not None else None
        a_lt = a_l[real].T.contiguous()  # [n, R]
        a_rt = a_r[real].T.contiguous()
        for x0 in range(0, n, chunk):
            xs = torch.arange(x0, min(n, x0 + chunk))
            h = torch.relu(a_lt[xs, None, :] + a_rt[None, :, :]).reshape(-1, len(real))
            logits = (h @ k_all) @ r_all  # Σ_ρ tr(ρ(z) Σ_i h_i κ_i b_i a_iᵀ) + top-r residual
            if bias is not None:
                logits += bias
            err = h @ rg_rest  # [N]
            zstar = table[xs].reshape(-1, 1)
            right = logits.gather(1, zstar)[:, 0]
            wrong = logits.scatter_(1, zstar, -float("inf")).max(1).values
            slack = SLACK * (1.0 + right.abs() + wrong.abs() + err)
            certified += int(((right - wrong - err) > slack).sum())
    oracle_bound = None
    if oracle and mu > 0:
        ok = 0
        for x0 in range(0, n, chunk):
            xs = torch.arange(x0, min(n, x0 + chunk))
            xx = xs.repeat_interleave(n)
            yy = torch.arange(n).repeat(len(xs))
            f = torch.relu(a_l[:, xx] + a_r[:, yy]).T @ a_u  # centred actual logits, no bias
            g = table[table[inv[xx][:, None], torch.arange(n)[None, :]], inv[yy][:, None]]
            ft = F[g]  # f̃(z|x,y) = F̃(x⁻¹ z y⁻¹)
            e = f - ft
            lower = mu + bmargin[table[xx, yy]] - (e.max(1).values - e.min(1).values)
            ok += int((lower > SLACK * scale_ref).sum())
        oracle_bound = ok / n_inputs
    return VerificationResult(
        bound=certified / n_inputs, seconds=time.perf_counter() - t0, tier=tier,
        ideal_margin=mu, oracle_bound=oracle_bound, n_certified=certified, n_inputs=n_inputs,
        rank=rank if tier == "C" else 0, n_virtual=ideal.n_virtual, details=details,
    )

