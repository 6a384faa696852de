"""``msae check PATH``: validate a checkpoint folder and print what it holds."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="validate an SAE checkpoint folder (cfg.json + safetensors)",
        description="Validate an SAE checkpoint folder and load it through SAELens.",
    )
    p.add_argument("path", help="folder holding cfg.json and sae_weights.safetensors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import msae_plugin
    from msae_plugin.errors import CheckpointError, MSAEConfigError, UnknownArchitectureError
    from msae_plugin.msae.checkpoint import check_checkpoint_dir

    msae_plugin.register()
    from sae_lens import SAE

    try:
        cfg = check_checkpoint_dir(args.path)
        sae = SAE.load_from_disk(args.path)
    except (CheckpointError, MSAEConfigError, UnknownArchitectureError) as exc:
        print(f"error: {exc}")
        return 1
    print(f"architecture: {cfg['architecture']}  d_in={sae.cfg.d_in}  d_sae={sae.cfg.d_sae}")
    ladder = getattr(sae.cfg, "ladder", None)
    if ladder:
        print(f"k ladder: {list(ladder)}  default_k: {sae.cfg.default_k}")
    hook = sae.cfg.metadata.hook_name
    if hook:
        print(f"hook: {hook}  model: {sae.cfg.metadata.model_name}")
    return 0
