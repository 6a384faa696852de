"""``msae demo``: the project's main job on the embedded default model (msae-tiny-clip)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train an MSAE on the embedded CLIP's patch activations; print and plot metrics",
        description="Train one Matryoshka SAE on patch activations of the embedded msae-tiny-clip "
        "model with SAELens's trainer, save/reload it as an SAELens checkpoint and report FVU / "
        "cosine / L0 / dead latents and zero-shot accuracy kept at every k. --synthetic runs the "
        "earlier demo on SAELens's synthetic hierarchical data instead.",
    )
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--tokens", type=int, default=None,
                   help="training activations (vision demo; default 614,400)")
    p.add_argument("--samples", type=int, default=None,
                   help="training samples (synthetic demo; default 400k)")
    p.add_argument("--synthetic", action="store_true",
                   help="run the synthetic-data demo instead of the vision demo")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.synthetic:
        from msae_plugin.demo import DemoConfig, run_demo

        cfg = DemoConfig(out_dir=args.out, seed=args.seed)
        if args.samples is not None:
            if args.samples < cfg.batch_size:
                raise SystemExit(f"--samples must be at least the batch size ({cfg.batch_size}).")
            cfg.training_samples = args.samples
        run_demo(cfg)
        return 0

    from msae_plugin.vision_demo import VisionDemoConfig, run_vision_demo

    vcfg = VisionDemoConfig(out_dir=args.out, seed=args.seed)
    if args.tokens is not None:
        if args.tokens < vcfg.train_batch_size_tokens:
            raise SystemExit(
                f"--tokens must be at least the batch size ({vcfg.train_batch_size_tokens})."
            )
        vcfg.training_tokens = args.tokens
    run_vision_demo(vcfg)
    return 0
