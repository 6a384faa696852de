"""``msae cache CONFIG``: fill a training config's activation cache without training."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache",
        help="extract a training config's activations into its cache (no training)",
        description="Run the hooked CLIP image tower over the config's image stream and write "
        "the activations at its hook to cached_activations_path (the default path when unset), "
        "as a training run of the config would, without training. Under torchrun each rank "
        "extracts its share into its own sub-cache: see docs/distributed.md.",
    )
    p.add_argument("config", help="a `msae train` config file (JSON; YAML with PyYAML)")
    p.add_argument("--tokens", type=int, default=None,
                   help="global tokens to cache (default: what a training run of the config "
                   "reads: its steps, the statistics batches and the mixing buffer)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="change a config field, as for `msae train`; repeatable")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from msae_plugin.distributed.context import init_from_env, shutdown
    from msae_plugin.vision.cache_builder import build_activation_cache
    from msae_plugin.vision.training import VisionSAERunnerConfig

    cfg = VisionSAERunnerConfig.from_file(args.config, overrides=args.override)
    ctx = init_from_env(cfg.device)  # one process unless launched by torchrun
    try:
        result = build_activation_cache(cfg, n_tokens=args.tokens, dist_ctx=ctx)
    finally:
        shutdown()
    if ctx.is_main:
        where = "rank 0's sub-cache " if ctx.active else ""
        print(f"{where}{result.path}: {result.n_images} images, {result.n_tokens} tokens "
              f"({result.added_images} images added)")
    return 0
