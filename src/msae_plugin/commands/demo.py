"""``msae demo``: the project's main job on the embedded default (synthetic hierarchical data)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train an MSAE on SAELens synthetic hierarchical data; print and plot its metrics",
        description="Train one Matryoshka SAE with SAELens's trainer, save/reload it as an "
        "SAELens checkpoint and report FVU / cosine / L0 / dead latents at every k.",
    )
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--samples", type=int, default=None, help="training samples (default 400k)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from msae_plugin.demo import DemoConfig, run_demo

    cfg = DemoConfig(out_dir=args.out, seed=args.seed)
    if args.samples is not None:
        if args.samples < cfg.batch_size:
            raise SystemExit(f"--samples must be at least the batch size ({cfg.batch_size}).")
        cfg.training_samples = args.samples
    run_demo(cfg)
    return 0
