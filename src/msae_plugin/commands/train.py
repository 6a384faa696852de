"""``msae train CONFIG``: train an SAE on CLIP image activations from a JSON/YAML config."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an SAE on CLIP image activations from a JSON/YAML config",
        description="Train an SAE (any SAELens architecture, msae included) on the activations "
        "of a hooked CLIP image tower with SAELens's SAETrainer, save it in SAELens's format and "
        "print held-out FVU / cosine / L0 / dead latents. See docs/vision-training.md. Under "
        "torchrun (`torchrun --nproc-per-node N -m msae_plugin train CONFIG`) the run is "
        "data-parallel over N processes: see docs/distributed.md.",
    )
    p.add_argument("config", help="config file (JSON; YAML with PyYAML installed)")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a config field, e.g. --override lr=1e-3 --override sae.d_sae=512 "
        "(values are parsed as JSON when possible); repeatable",
    )
    p.add_argument(
        "--resume",
        metavar="CHECKPOINT_DIR",
        nargs="?",
        const="auto",
        default=None,
        help="resume an interrupted or killed run: alone, from the newest complete checkpoint "
        "under the config's checkpoint_path (a fresh start when there is none yet); with a "
        "folder, from that checkpoint or the newest complete one inside it",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import msae_plugin

    msae_plugin.register()
    from sae_lens.training._interruption import InterruptedException

    from msae_plugin.distributed.context import init_from_env, shutdown
    from msae_plugin.errors import (
        CheckpointError,
        DeviceUnavailableError,
        DistributedError,
        ModelInputError,
        MSAEConfigError,
        NonFiniteActivationsError,
        OutputPathError,
        SAEModelMismatchError,
        UnknownArchitectureError,
        UnknownHookError,
        UnsupportedModelError,
    )
    from msae_plugin.metrics import format_table
    from msae_plugin.vision.activation_cache import ActivationCacheError
    from msae_plugin.vision.image_sources import ImageSourceError, ImageSourceExhaustedError
    from msae_plugin.vision.token_selection import TokenSelectionError
    from msae_plugin.vision.training import (
        VisionConfigError,
        VisionSAERunnerConfig,
        VisionSAETrainingRunner,
    )

    expected = (
        VisionConfigError,
        TokenSelectionError,
        ImageSourceError,
        ImageSourceExhaustedError,
        ActivationCacheError,
        CheckpointError,
        DeviceUnavailableError,
        DistributedError,
        ModelInputError,
        MSAEConfigError,
        NonFiniteActivationsError,
        OutputPathError,
        SAEModelMismatchError,
        UnknownArchitectureError,
        UnknownHookError,
        UnsupportedModelError,
        FileNotFoundError,
    )
    runner = None
    ctx = None
    try:
        cfg = VisionSAERunnerConfig.from_file(args.config, overrides=args.override)
        ctx = init_from_env(cfg.device)  # one process unless launched by torchrun
        runner = VisionSAETrainingRunner(cfg, resume_from_checkpoint=args.resume, dist_ctx=ctx)
        sae = runner.run()
    except (KeyboardInterrupt, InterruptedException):
        where = runner.interrupted_checkpoint if runner is not None else None
        if ctx is not None and not ctx.is_main:
            return 130
        if where is not None:
            print(f"interrupted; checkpoint saved to {where}")
            print(f"resume with: msae train {args.config} --resume {where}")
            print("(or --resume alone: the newest complete checkpoint under checkpoint_path)")
        else:
            print("interrupted (no checkpoint: checkpoint_path is null or training had not begun)")
        return 130
    except expected as exc:
        named = str(exc).startswith("rank ")  # collective errors already say which rank
        prefix = f"rank {ctx.rank}: " if ctx is not None and ctx.active and not named else ""
        print(f"error: {prefix}{exc}", file=sys.stderr)
        return 2
    finally:
        shutdown()

    if not ctx.is_main:  # rank 0 reports for the run
        return 0
    if cfg.output_path is not None:
        print(f"saved SAE ({sae.cfg.architecture()}, d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae}) "
              f"to {cfg.output_path}")
    else:
        print("output_path is null: the trained SAE was not saved")
    x, held_out = runner.eval_activations()
    results = runner.evaluate(sae, x)
    source = "held-out images" if held_out else "training images (no held-out split)"
    print(f"metrics on {x.shape[0]} tokens of {source} at {cfg.hook_name}:")
    print(format_table(results))
    return 0
