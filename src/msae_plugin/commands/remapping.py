"""``msae remapping``: one SAE (trained on the base model) on the base and adapted versions of the
embedded CLIP, on the adaptation task (rotated digit scenes, base-to-novel); tables, JSON and
PNGs (docs/remapping.md). Thin over :mod:`msae_plugin.remapping`."""

from __future__ import annotations

import argparse

from msae_plugin.commands._common import non_negative_int, positive_float, positive_int

DEFAULT_SAE = "msae-tiny-clip-msae:blocks.2.hook_resid_post"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "remapping",
        help="compare one SAE's latents on a base and an adapted model (PatchSAE)",
        description="Run one SAE, trained on the base model, on the base and on adapted models "
        "(shipped: prompt-learning, finetune; or a folder written by "
        "adaptation.save_adapted_model) over the adaptation task, and report per-latent "
        "shifts, the three latent groups per class, on/off masking curves and the improvement "
        "rate, for base and novel classes. Writes remapping.json and PNGs to --out.",
    )
    p.add_argument("--sae", default=DEFAULT_SAE,
                   help=f"SAE folder or RELEASE:SAE_ID (default {DEFAULT_SAE})")
    p.add_argument("--adapted", nargs="+", default=["prompt-learning", "finetune"],
                   metavar="MODEL", help="adapted models: shipped names or folders")
    p.add_argument("--k", type=positive_int, default=32,
                   help="read an MSAE at this ladder k (default 32; 0 = its ReLU path)")
    p.add_argument("--relu", action="store_true", help="read an MSAE on its ReLU path")
    p.add_argument("--tau", type=positive_float, default=0.2,
                   help="activity threshold of the class-level counts (default 0.2, PatchSAE)")
    p.add_argument("--ks", type=positive_int, nargs="+", default=None,
                   help="k values of the masking curves (default 1 2 5 10 50 100 500 1000, d_sae)")
    p.add_argument("--upper-rank", type=positive_int, default=50)
    p.add_argument("--lower-rank", type=positive_int, default=100)
    p.add_argument("--reading", choices=("pooled", "per_model"), default="pooled",
                   help="how the group bounds are read (docs/remapping.md)")
    p.add_argument("--n-train", type=positive_int, default=1000, help="training-split scenes")
    p.add_argument("--n-test", type=positive_int, default=500, help="held-out scenes")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default="remapping", help="output folder (default remapping)")
    p.set_defaults(func=run)


def _fmt(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def format_rows(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def masking_rows(results: dict) -> list[dict]:
    """Mean accuracy (%) per model and split at each k: on/off class top-k and baselines."""
    rows = []
    for split, r in results.items():
        for model in r.names:
            curve = r.curves[model]
            means = curve.mean()
            for i, k in enumerate(curve.ks):
                row = {"split": split, "model": model, "k": k}
                for key in ("on_class", "off_class", "on_random", "off_random", "on_dataset",
                            "off_dataset"):
                    if key in means:
                        row[key] = 100 * means[key][i]
                rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    """Cheap checks first (output folder, bounds), then models and data."""
    import json

    from msae_plugin.adaptation.saving import load_adapted_model, load_base_model
    from msae_plugin.adaptation.task import BASE_CLASSES, NOVEL_CLASSES, make_task_data
    from msae_plugin.commands._common import load_sae, prepare_output_dir
    from msae_plugin.errors import RemappingError
    from msae_plugin.remapping import plot_groups, plot_masking, plot_patch_view, plot_statistics
    from msae_plugin.remapping.protocol import base_to_novel, protocol_rows
    from msae_plugin.vision.hook_names import block_of

    out = prepare_output_dir(args.out)
    if args.upper_rank >= args.lower_rank:
        raise RemappingError(f"--upper-rank ({args.upper_rank}) must be below --lower-rank "
                             f"({args.lower_rank})")
    sae = load_sae(args.sae, RemappingError, DEFAULT_SAE)
    k = None if args.relu or not getattr(sae.cfg, "ladder", None) else args.k
    base = load_base_model()
    adapted = [load_adapted_model(a) for a in args.adapted]
    train = make_task_data(args.n_train, "train", seed=args.seed)
    test = make_task_data(args.n_test, "test", seed=args.seed + 1)
    report: dict = {"sae": args.sae, "k": k, "tau": args.tau, "task": train.shift,
                    "base_classes": list(BASE_CLASSES), "novel_classes": list(NOVEL_CLASSES),
                    "models": {}}
    for zsm in adapted:
        print(f"\n== base vs {zsm.name} (SAE {args.sae}, k={k}, tau={args.tau})")
        results = base_to_novel(
            base, zsm, sae, (train.images, train.labels), (test.images, test.labels),
            BASE_CLASSES, NOVEL_CLASSES, tau=args.tau, k=k, ks=args.ks,
            upper_rank=args.upper_rank, lower_rank=args.lower_rank, reading=args.reading,
            seed=args.seed)
        rows = protocol_rows(results)
        print(format_rows(rows))
        h = results["base"].headline
        print(f"\nheadline (base classes, SAE spliced): base {100 * h['base_sae']:.1f} %, "
              f"{zsm.name} {100 * h['adapted_sae']:.1f} %, {zsm.name} with only the "
              f"{h['base_active_latents']} base-active latents {100 * h['adapted_base_latents_only']:.1f} % "
              f"-> {100 * h['recovered']:.0f} % of the gain kept; {h['adapted_only_latents']} "
              f"latents are active (> tau) on {zsm.name} only")
        print("\nclass-wise top latents (base classes; latent:count of active (image, token) pairs)")
        for row in results["base"].class_top_latents(5):
            cells = ["  ".join(f"{j}:{n}" for j, n in row[m]) for m in results["base"].names]
            print(f"  {row['class']:>6}  {base.name}: {cells[0]}  |  {zsm.name}: {cells[1]}")
        print()
        print(format_rows([r for r in masking_rows(results) if r["split"] == "base"]))
        tag = zsm.name.replace("/", "_")
        plot_statistics(results["base"], out / f"statistics_{tag}.png")
        plot_masking(results["base"], out / f"masking_{tag}.png")
        plot_groups(results["base"], 0, out / f"groups_{tag}.png")
        if block_of(str(sae.cfg.metadata.hook_name)) is not None:  # a hook with patch tokens
            plot_patch_view(base, zsm, sae, test.images[0], test.raw[0],
                            out / f"patch_view_{tag}.png", k=k)
        report["models"][zsm.name] = {"protocol": rows,
                                      **{s: r.to_dict() for s, r in results.items()}}
    (out / "remapping.json").write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out / 'remapping.json'} and PNGs in {out}")
    return 0
