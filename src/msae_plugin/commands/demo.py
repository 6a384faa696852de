"""``msae demo``: the project's main job on the embedded default model (msae-tiny-clip).

Only argument parsing lives here; the demos themselves are in :mod:`msae_plugin.demo`.
"""

from __future__ import annotations

import argparse

from msae_plugin.commands._common import non_negative_int, positive_int


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
    p.add_argument("--tokens", type=positive_int, default=None,
                   help="training activations (vision demo; default 614,400; at least one "
                   "batch of 4096)")
    p.add_argument("--samples", type=positive_int, default=None,
                   help="training samples (synthetic demo; default 400k; at least one batch of "
                   "1024)")
    p.add_argument("--synthetic", action="store_true",
                   help="run the synthetic-data demo instead of the vision demo")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed (≥ 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from msae_plugin.commands._common import check_output_entries, prepare_output_dir
    from msae_plugin.errors import MSAEConfigError

    if args.synthetic:
        from msae_plugin.demo import synthetic

        cfg = synthetic.DemoConfig(out_dir=args.out, seed=args.seed)
        if args.samples is not None:
            if args.samples < cfg.batch_size:
                raise MSAEConfigError(
                    f"--samples {args.samples} is less than one training batch; pass at least "
                    f"{cfg.batch_size}."
                )
            cfg.training_samples = args.samples
        out = prepare_output_dir(args.out)
        check_output_entries(out, files=synthetic.OUTPUT_FILES, folders=synthetic.OUTPUT_FOLDERS)
        synthetic.run_demo(cfg)
        return 0

    from msae_plugin.demo import vision

    vcfg = vision.VisionDemoConfig(out_dir=args.out, seed=args.seed)
    if args.tokens is not None:
        if args.tokens < vcfg.train_batch_size_tokens:
            raise MSAEConfigError(
                f"--tokens {args.tokens} is less than one training batch; pass at least "
                f"{vcfg.train_batch_size_tokens}."
            )
        vcfg.training_tokens = args.tokens
    out = prepare_output_dir(args.out)
    check_output_entries(out, files=vision.OUTPUT_FILES, folders=vision.OUTPUT_FOLDERS)
    vision.run_vision_demo(vcfg)
    return 0
