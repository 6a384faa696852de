"""``msae groups``: the finite-group testbed on one network — exact brute-force accuracy,
equivariance, the extracted ρ-set explanation and the verifier's certified accuracy bound
(docs/groups.md). Thin over :mod:`msae_plugin.groups`."""

from __future__ import annotations

import argparse

from msae_plugin.commands._common import non_negative_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "groups",
        help="group-composition testbed: brute force, equivariance, explanation, verified bound",
        description="Check a group-composition network (Wu et al. 2024): exact accuracy over all "
        "|G|^2 pairs, logit bi-equivariance, the rho-set explanation extracted from its "
        "weights, and the verifier's certified accuracy lower bound per tier. MODEL: a shipped "
        "group name (S4), a folder written by GroupMLP.save, or 'construct:GROUP' for an exact "
        "constructed rho-set network.",
    )
    p.add_argument("model", metavar="MODEL", nargs="?", default="S4",
                   help="shipped group name (default S4), a GroupMLP folder, or construct:GROUP")
    p.add_argument("--tiers", nargs="+", default=["B", "A", "C"], choices=("A", "B", "C"),
                   help="verifier tiers to run (default B A C)")
    p.add_argument("--rank", type=non_negative_int, nargs="+", default=[0, 16],
                   help="exact residual components for tier C (default 0 16)")
    p.set_defaults(func=run)


def load_network(spec: str):
    """``(FoldedWeights, FiniteGroup, label)`` for a shipped name, a folder or construct:GROUP."""
    from pathlib import Path

    from msae_plugin.groups.finite import get_group
    from msae_plugin.groups.model import GroupMLP, load_shipped_model, shipped_models

    if spec.startswith("construct:"):
        from msae_plugin.groups.construct import construct_rho_network

        group = get_group(spec.split(":", 1)[1])
        folded, _ = construct_rho_network(group, "standard", cs=2, scale=3.0)
        return folded, group, f"constructed {group.name} (standard irrep, 2 circuits)"
    if Path(spec).is_dir():
        model = GroupMLP.load(spec)
    elif spec.upper() in {s.upper() for s in shipped_models()}:
        model = load_shipped_model(spec.upper())
    else:
        from msae_plugin.errors import GroupError

        raise GroupError(f"{spec!r} is neither a shipped model {shipped_models()}, a GroupMLP "
                         "folder, nor construct:GROUP (e.g. construct:S5).")
    group = get_group(model.cfg.group)
    return model.folded(), group, f"{spec} ({group.describe()})"


def run(args: argparse.Namespace) -> int:
    import torch

    from msae_plugin.groups.brute_force import brute_force_accuracy
    from msae_plugin.groups.equivariance import logit_biequivariance
    from msae_plugin.groups.explain import explain
    from msae_plugin.groups.verify import verify

    torch.set_num_threads(1)  # small models: one thread is fastest (docs/groups.md)
    folded, group, label = load_network(args.model)
    acc, bf_s = brute_force_accuracy(folded, group)
    bi = logit_biequivariance(folded, group)
    print(f"{label}: {folded.n_neurons} neurons")
    print(f"brute-force accuracy over {group.order ** 2} pairs: {acc:.4f} ({1e3 * bf_s:.1f} ms)")
    print(f"logit bi-equivariance R^2 {bi.r2:.3f}, argmax F = e: {bi.argmax_is_identity}, "
          f"ideal margin {bi.ideal_margin:.2f}")
    exp = explain(folded, group)
    print(f"explanation: {len(exp.circuits)} circuits, {exp.fraction_neurons:.0%} of neurons and "
          f"{exp.fraction_norm:.0%} of weight norm explained")
    print("\n| tier | r | bound | ideal margin | verify ms | brute force ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for tier in args.tiers:
        for r in (args.rank if tier == "C" else [0]):
            res = verify(folded, group, exp, tier=tier, rank=r)
            if res.bound > acc + 1e-12:  # the verifier must be sound; a bug would show here
                raise RuntimeError(f"unsound bound {res.bound} > accuracy {acc}")
            margin = "-" if res.ideal_margin is None else f"{res.ideal_margin:.2f}"
            print(f"| {tier} | {r} | {res.bound:.3f} | {margin} | {1e3 * res.seconds:.1f} | "
                  f"{1e3 * bf_s:.1f} |")
    return 0
