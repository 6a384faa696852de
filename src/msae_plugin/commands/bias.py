"""``msae bias``: the embedded concept-bias demonstration (docs/bias.md). Trains a parity probe
on CLIP embeddings of scenes where colour gives the label away (even = red, odd = blue) and one
where it does not, clamps the "red" latents of the shipped MSAE up and down, and writes the
flip-rate table (``bias.md``, ``bias.json``) and plot (``bias.png``) to --out."""

from __future__ import annotations

import argparse

from msae_plugin.commands._common import non_negative_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bias",
        help="concept bias analysis of a biased vs an unbiased probe (embedded demo)",
        description="Clamp the latents the shipped MSAE names after a colour up and down before "
        "two linear parity probes (one trained where colour predicts the label, one without) "
        "and report decision flip rates and accuracy changes per (parity, colour) group.",
    )
    p.add_argument("--n-images", type=positive_int, default=400,
                   help="scenes per training set and in the evaluation set (default 400)")
    p.add_argument("--concept", default="red",
                   help="concept word whose latents are clamped (default red)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="scene seed (≥ 0)")
    p.add_argument("--out", default="bias", help="output folder (default bias)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The output folder is checked before the model and SAE load."""
    import json

    from msae_plugin.bias.demo import format_table, plot, run_demo
    from msae_plugin.commands._common import check_output_entries, prepare_output_dir

    files = ("bias.md", "bias.json", "bias.png")
    out = prepare_output_dir(args.out)
    check_output_entries(out, files=files)
    demo = run_demo(args.n_images, seed=args.seed, concept=args.concept)
    table = format_table(demo)
    (out / "bias.md").write_text(table + "\n")
    (out / "bias.json").write_text(json.dumps(demo.to_dict(), indent=1))
    plot(demo, out / "bias.png")
    print(table)
    r = demo.results
    print(f"\nlatents named {demo.concept!r}: {r['biased'].latents}; overall flip rate "
          f"(up / down): biased {r['biased'].overall['up'].flip_rate:.2f} / "
          f"{r['biased'].overall['down'].flip_rate:.2f}, unbiased "
          f"{r['unbiased'].overall['up'].flip_rate:.2f} / "
          f"{r['unbiased'].overall['down'].flip_rate:.2f}")
    print("wrote " + ", ".join(str(out / f) for f in files))
    return 0
