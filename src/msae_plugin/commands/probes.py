"""``msae probes``: linear probes with Hewitt & Liang control tasks on the embedded model, per
block, on the image embedding and on MSAE latents at several k; writes ``probes.md``,
``probes.json`` and ``probes.png`` to --out (docs/probes.md)."""

from __future__ import annotations

import argparse

from msae_plugin.commands._common import non_negative_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probes",
        help="linear probes + control tasks (layer × property table and heat map)",
        description="Fit logistic-regression probes for scene properties on held-out digit "
        "scenes of the embedded model at each block's residual stream (CLS token), "
        "hook_image_embed and the shipped MSAE's latents at each --ks; report held-out "
        "accuracy, control-task accuracy (random label per source digit) and selectivity.",
    )
    p.add_argument("--layers", type=non_negative_int, nargs="+", default=None,
                   help="block indices (default: all)")
    p.add_argument("--properties", nargs="+", default=["digit", "colour", "rotation", "texture"],
                   help="scene properties (default: digit colour rotation texture)")
    p.add_argument("--ks", type=positive_int, nargs="*", default=[4, 16, 64],
                   help="MSAE sparsities to probe (default 4 16 64; none to skip)")
    p.add_argument("--n-images", type=positive_int, default=1500,
                   help="held-out scenes (default 1500)")
    p.add_argument("--pool", choices=("cls", "mean"), default="cls",
                   help="token pooling for residual-stream hooks (default cls)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="scene and split seed")
    p.add_argument("--out", default="probes", help="output folder (default probes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The output folder is checked before the model loads."""
    import json

    from msae_plugin.commands._common import check_output_entries, prepare_output_dir
    from msae_plugin.probes import plot_grid, run_study

    out = prepare_output_dir(args.out)
    files = ("probes.md", "probes.json", "probes.png")
    check_output_entries(out, files=files)
    grid = run_study(layers=args.layers, properties=tuple(args.properties),
                     n_images=args.n_images, ks=tuple(args.ks), pool=args.pool, seed=args.seed)
    table = grid.to_markdown()
    (out / "probes.md").write_text(
        "cells: held-out accuracy / control accuracy (**selectivity**)\n\n" + table + "\n")
    (out / "probes.json").write_text(json.dumps(grid.to_dict(), indent=1))
    plot_grid(grid, out / "probes.png")
    print(table)
    print(f"\nwrote {', '.join(str(out / f) for f in files)}")
    return 0
