"""B9: the ρ-set verifier (issue 13) against brute force: certified bound, true accuracy, times.

For constructed exact ρ-set networks (research brief §4.2) on S4, A5 and S5, clean and with
i.i.d. Gaussian noise on every weight (and on a logit bias), this reports the true accuracy
(brute force over all |G|² pairs, ties wrong) with its time, and for each verifier tier
(B: O(m|G|); A: O(m|G|²); C_r: exact (actual hidden) × (ideal W_U) in irrep form plus the top-r
residual components) the certified bound and its time, given the ground-truth explanation and
the one ``explain`` extracts from the weights (extraction time reported separately). With
``--models DIR`` every saved GroupMLP folder under DIR (``config.json`` + ``model.safetensors``)
is explained and verified too.

Timing claims live here, not in unit tests. The verifier includes its explanation checks
(homomorphism, ρ-set closure, padding); brute force is one batched ``FoldedWeights.logits``
over all pairs (the fastest plain form on CPU). Times are the best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, write_json  # noqa: E402

TIERS = [("B", 0), ("A", 0), ("C", 0), ("C", 8), ("C", 16), ("C", 24)]


def brute_force(folded, group) -> tuple[float, float]:
    """Exact accuracy (ties within 1e-9 relative count wrong) and its wall time."""
    n = group.order
    xs = torch.arange(n).repeat_interleave(n)
    ys = torch.arange(n).repeat(n)
    t0 = time.perf_counter()
    logits = folded.logits(xs, ys)
    top = logits.max(1).values
    near = (logits >= (top - 1e-9 * (1 + top.abs()))[:, None]).sum(1)
    acc = float(((logits.argmax(1) == group.table[xs, ys]) & (near == 1)).double().mean())
    return acc, time.perf_counter() - t0


def best_of(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def parse_tiers(names: list[str]) -> list[tuple[str, int]]:
    """``["B", "A", "C8"]`` → ``[("B", 0), ("A", 0), ("C", 8)]``."""
    out = []
    for name in names:
        tier, rank = name[:1].upper(), name[1:]
        if tier not in ("A", "B", "C") or (rank and (tier != "C" or not rank.isdigit())):
            raise SystemExit(f"error: bad tier {name!r}; use B, A or C<r> (e.g. C16)")
        out.append((tier, int(rank or 0)))
    return out


def run_case(name: str, folded, group, truth, repeats: int, oracle: bool,
             tiers: list[tuple[str, int]] = TIERS) -> list[dict]:
    from msae_plugin.groups.explain import explain
    from msae_plugin.groups.verify import verify

    (acc, _), bf_s = best_of(lambda: brute_force(folded, group), repeats)
    exp, ex_s = best_of(lambda: explain(folded, group), 1)
    rows = []
    for label, expl in (("truth", truth), ("extracted", exp)):
        if expl is None:
            continue
        for tier, r in tiers:
            res, s = best_of(lambda t=tier, r=r, e=expl: verify(folded, group, e, t, rank=r),
                             repeats)
            orc = verify(folded, group, expl, "A", oracle=True).oracle_bound if (
                oracle and (tier, r) == tiers[0]) else None
            if res.bound > acc:
                raise AssertionError(f"UNSOUND: {name} {label} {tier}{r}: {res.bound} > {acc}")
            rows.append({
                "case": name, "explanation": label, "tier": f"{tier}{r if tier == 'C' else ''}",
                "n_neurons": folded.n_neurons, "accuracy": acc, "bound": res.bound,
                "ideal_margin": res.ideal_margin, "oracle_bound": orc,
                "verify_s": s, "brute_force_s": bf_s, "ratio": s / bf_s,
                "explain_s": ex_s, "explained_neurons": exp.fraction_neurons,
                "explained_norm": exp.fraction_norm, "n_circuits": len(exp.circuits),
                "n_virtual": res.n_virtual, "valid": res.valid,
            })
    return rows


def noisy(folded, noise: float, seed: int):
    from msae_plugin.groups.folded import FoldedWeights

    gen = torch.Generator().manual_seed(seed)

    def n(t):
        return t + noise * torch.randn(t.shape, generator=gen, dtype=torch.float64)

    bias = noise * torch.randn(folded.n_elements, generator=gen, dtype=torch.float64)
    return FoldedWeights(n(folded.w_l), n(folded.w_r), n(folded.w_u), bias)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=None,
                   help="folder of saved GroupMLP folders to explain and verify")
    p.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.01, 0.03, 0.1])
    p.add_argument("--groups", nargs="*", default=["S4", "A5", "S5"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--oracle", action="store_true", help="also the oracle bound (brute-force cost)")
    p.add_argument("--tiers", nargs="+", default=["B", "A", "C0", "C8", "C16", "C24"],
                   help="verifier tiers to run (tier A and the oracle cost O(M|G|²) for an "
                        "explanation padded to M neurons: slow on fragmented A5 explanations)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    tiers = parse_tiers(args.tiers)
    torch.set_num_threads(args.threads)

    from msae_plugin.groups.construct import construct_rho_network
    from msae_plugin.groups.finite import get_group

    # one configuration per group that is exact: S4 and A5 with 2 generic c (scale 3), S5 with
    # the brief's 5 circuits c = b_1..b_5 (125 neurons, scale 3)
    configs = {"S4": ("standard", 2), "A5": ("standard", 2), "S5": ("standard", "rho_set")}
    rows: list[dict] = []
    for gname in args.groups:
        group = get_group(gname)
        irrep, cs = configs.get(gname, ("standard", 2))
        clean, truth = construct_rho_network(group, irrep, cs, scale=3.0)
        for noise in args.noise:
            folded = clean if noise == 0 else noisy(clean, noise, seed=0)
            rows += run_case(f"{gname} constructed noise={noise}", folded, group, truth,
                             args.repeats, args.oracle, tiers)
            print(f"done {gname} noise={noise}", flush=True)
    if args.models is not None:
        from msae_plugin.groups.model import GroupMLP

        for folder in sorted(q for q in args.models.iterdir() if (q / "config.json").is_file()):
            model = GroupMLP.load(folder)
            f = model.folded()
            for attr in ("w_l", "w_r", "w_u"):
                setattr(f, attr, getattr(f, attr).double())
            if f.bias is not None:
                f.bias = f.bias.double()
            rows += run_case(f"trained {folder.name}", f, model.group, None, args.repeats,
                             args.oracle, tiers)
            print(f"done {folder.name}", flush=True)

    headers = ["case", "expl", "tier", "m", "acc", "bound", "μ", "oracle", "verify ms",
               "brute ms", "ratio", "explained"]
    table = [[r["case"], r["explanation"], r["tier"], r["n_neurons"], r["accuracy"], r["bound"],
              r["ideal_margin"], r["oracle_bound"], 1e3 * r["verify_s"],
              1e3 * r["brute_force_s"], r["ratio"], r["explained_neurons"]] for r in rows]
    print_table(headers, table, fmt=lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
    path = write_json("b9_group_verifier", {"machine": machine_info(), "args": vars(args),
                                            "rows": rows}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
