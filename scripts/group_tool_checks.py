"""Check the plugin's own tools (MSAE / TopK SAEs, InversionView) against the known ground truth
of group-composition networks (Wu et al. 2024 ρ-set circuits; ``msae_plugin.groups``).

Testbeds:
* ``S4-mix``: a constructed exact S4 network, 118 neurons: 4 standard circuits (tetrahedra,
  generic c), 2 circuits of the 2-dim irrep (triangles; its kernel is the Klein group, so its
  patterns store cosets, not elements) and 1 standard⊗sign circuit (|B| = 6).
* ``S4-coset`` (InversionView only): 2 circuits of the 2-dim irrep alone, a network whose
  embeddings store x only up to the Klein four-group; preimages should keep the coset, not x.
* ``S5-std``: the constructed S5 network of 5 standard circuits with c = b_1 … b_5 (125 neurons).
* ``S4-trained``: the shipped trained S4 GroupMLP, with ``explain()``'s extracted circuits as
  the ground truth (skipped with a note when the model is not shipped).

Writes ``<out>/group_tool_checks.json`` and one PNG per testbed (best cosine per ground-truth
direction vs k). ``--quick`` shortens every training run (a smoke test).

    .venv/bin/python scripts/group_tool_checks.py --out /tmp/group_tool_checks
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("group_tool_checks"))
    p.add_argument("--testbeds", nargs="+", default=["S4-mix", "S4-coset", "S5-std",
                                                    "S4-trained"])
    p.add_argument("--sae-steps", type=int, default=3000)
    p.add_argument("--sae-lr", type=float, default=1e-3)
    p.add_argument("--topk-ks", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    p.add_argument("--iv-steps", type=int, default=1500)
    p.add_argument("--iv-queries", type=int, default=64)
    p.add_argument("--iv-samples", type=int, default=16)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is fastest for these tiny models on a busy machine)")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="for S4-trained: a GroupMLP folder (GroupMLP.save) instead of the shipped "
                        "model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.sae_steps, args.iv_steps, args.topk_ks = 300, 200, [4]
        args.iv_queries, args.iv_samples = 16, 4
    return args


def testbed(name: str, seed: int, model_dir: Path | None = None
            ) -> tuple[Any, Any, Any, Any] | None:
    """``(group, folded, explanation, GroupMLP or None)``; None when not available."""
    from msae_plugin.groups.construct import construct_rho_network
    from msae_plugin.groups.finite import get_group
    from msae_plugin.groups.sae_check import combine_networks

    if name == "S4-mix":
        g = get_group("S4")
        f, ex = combine_networks([construct_rho_network(g, "standard", 4, seed=seed),
                                  construct_rho_network(g, "dim2_1", 2, seed=seed + 1),
                                  construct_rho_network(g, "standard_sign", 1, seed=seed + 2)],
                                 g)
        return g, f, ex, None
    if name == "S4-coset":
        g = get_group("S4")
        f, ex = construct_rho_network(g, "dim2_1", 2, seed=seed + 1)
        return g, f, ex, None
    if name == "S5-std":
        g = get_group("S5")
        f, ex = construct_rho_network(g, "standard", "rho_set")
        return g, f, ex, None
    if name == "S4-trained":
        from msae_plugin.groups.explain import explain
        from msae_plugin.groups.model import GroupMLP, load_shipped_model, shipped_models

        if model_dir is not None:
            model = GroupMLP.load(model_dir)
        elif "S4" not in shipped_models():
            return None
        else:
            model = load_shipped_model("S4")
        f = model.folded()
        return model.group, f, explain(f, model.group), model
    raise SystemExit(f"unknown testbed {name!r}")


def accuracy(folded: Any, group: Any) -> float:
    from msae_plugin.groups.sae_check import exhaustive_pairs

    x, y = exhaustive_pairs(group.order)
    return float((folded.logits(x, y).argmax(1) == group.table[x, y]).float().mean())


def plot(name: str, sae: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [("neuron", "neuron basis"), ("circuit_a", "circuit feature (per a)"),
             ("circuit_b", "circuit feature (per b)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    rows = sae["rows"]
    ref = {r["model"]: r for r in rows if "k" not in r}
    for ax, (kind, title) in zip(axes, kinds, strict=True):
        for model, style in (("msae", "o-"), ("topk", "s--")):
            rs = [r for r in rows if r["model"] == model]
            if not rs:
                continue
            ks = [r["k"] for r in rs]
            means = [r["scores"][kind]["mean"] for r in rs]
            ax.plot(ks, means, style, label=f"{model} mean")
            ax.plot(ks, [r["scores"][kind]["share_ge"] for r in rs], style, alpha=0.4,
                    label=f"{model} share ≥ 0.9")
        for model, color in (("identity", "grey"), ("random", "red")):
            if model in ref:
                ax.axhline(ref[model]["scores"][kind]["mean"], color=color, lw=1, ls=":",
                           label=f"{model} decoder mean")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (TopK)")
        ax.set_title(title)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("best |cos| per ground-truth direction")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{name}: SAE decoder vs ρ-set ground truth")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from msae_plugin.groups.inversion_check import group_mlp_from_folded, inversion_check
    from msae_plugin.groups.sae_check import (
        circuits_from_explanation,
        hidden_activations,
        sae_check,
    )

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    payload: dict[str, Any] = {
        "command": "python scripts/group_tool_checks.py " + " ".join(argv or sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "threads": args.threads},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "testbeds": {},
    }
    for name in args.testbeds:
        t0 = time.perf_counter()
        tb = testbed(name, args.seed, args.model_dir)
        if tb is None:
            print(f"\n== {name}: skipped (no shipped S4 model in this install)")
            payload["testbeds"][name] = {"skipped": "no shipped model"}
            continue
        group, folded, expl, model = tb
        circuits = circuits_from_explanation(expl, group)
        entry: dict[str, Any] = {
            "source": str(args.model_dir) if model is not None and args.model_dir else
            ("shipped model" if model is not None else "constructed"),
            "group": group.name, "n_neurons": folded.n_neurons, "accuracy": accuracy(folded, group),
            "explanation": expl.describe(),
        }
        print(f"\n== {name}: {group.name}, {folded.n_neurons} neurons, accuracy "
              f"{entry['accuracy']:.4f}\n{expl.describe()}")
        if name != "S4-coset":
            data = hidden_activations(folded)
            sae = sae_check(data, circuits, d_sae=2 * folded.n_neurons, k_start=2,
                            topk_ks=args.topk_ks, steps=args.sae_steps, lr=args.sae_lr,
                            seed=args.seed)
            entry["sae"] = sae.to_dict()
            entry["sae_table"] = sae.table()
            print(f"-- SAE check (hook_post, {data.shape[0]} inputs x {data.shape[1]} dims, "
                  f"{sae.config['data_l0']:.1f} active neurons per input)")
            print(sae.table())
            png = args.out / f"sae_{name}.png"
            plot(name, entry["sae"], png)
            entry["plot"] = str(png)
        probed = model if model is not None else group_mlp_from_folded(folded, group)
        iv = inversion_check(probed, circuits, steps=args.iv_steps, n_queries=args.iv_queries,
                             n_samples=args.iv_samples, seed=args.seed)
        entry["inversionview"] = iv.to_dict()
        entry["inversionview_table"] = iv.table()
        print("-- InversionView (held-out queries)")
        print(iv.table())
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"({name}: {entry['seconds']} s)")
        payload["testbeds"][name] = entry
    payload["wall_seconds"] = round(time.perf_counter() - t_all, 1)
    path = args.out / "group_tool_checks.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nwrote {path} (total {payload['wall_seconds']} s)")
    return payload


if __name__ == "__main__":
    main()
