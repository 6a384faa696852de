"""``msae convert REFERENCE.pt OUT_DIR``: a checkpoint of the MSAE paper's reference code, written
as an SAELens ``msae`` folder.

Thin over :func:`msae_plugin.msae.reference.convert_reference_checkpoint` (which checks OUT_DIR
before reading the file, and reads it tensors-only); the mapping is documented there and in
docs/msae.md ("Checkpoints from the reference code").
"""

from __future__ import annotations

import argparse
import math


def _none_or_str(value: str) -> str | None:
    return None if value.strip().lower() == "none" else value


def _tolerance(value: str) -> float | None:
    if value.strip().lower() == "none":
        return None
    try:
        tol = float(value)
    except ValueError:
        tol = -1.0
    if not (math.isfinite(tol) and tol >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'none', got {value!r}")
    return tol


def add_parser(sub: argparse._SubParsersAction) -> None:
    from msae_plugin.msae.reference import (
        DEFAULT_DECODER_NORM_TOL,
        DEFAULT_MEAN_KEY,
        DEFAULT_SCALE_KEY,
    )

    p = sub.add_parser(
        "convert",
        help="convert a checkpoint of the MSAE paper's reference code to an SAELens folder",
        description="Read a .pt/.pth file saved by the MSAE reference code (github.com/WolodjaZ/"
        "MSAE; tensors only, a pickle with other objects is refused) and write it as an SAELens "
        "msae checkpoint (cfg.json + sae_weights.safetensors) computing the same codes and "
        "reconstructions, standardisation included. See docs/msae.md.",
    )
    p.add_argument("reference", help="the reference code's checkpoint file (.pt/.pth)")
    p.add_argument("out_dir", help="output folder (created; its cfg.json and weights replaced)")
    p.add_argument("--hook-name", default=None, help="hook the activations came from (metadata)")
    p.add_argument("--model-name", default=None, help="model the activations came from (metadata)")
    p.add_argument(
        "--k-levels", type=int, nargs="+", default=None, metavar="K",
        help="trained k ladder, e.g. 64 128 256 (d_sae is appended); default: 64, 128, ... "
        "doubling up to d_sae, as in the paper",
    )
    p.add_argument("--tied", action="store_true",
                   help="the model was trained with tied=True (the file has no decoder)")
    p.add_argument("--mean-key", type=_none_or_str, default=DEFAULT_MEAN_KEY,
                   help=f"key of the mean mu in the file (default {DEFAULT_MEAN_KEY}; 'none': "
                   "no centring)")
    p.add_argument("--scale-key", type=_none_or_str, default=DEFAULT_SCALE_KEY,
                   help=f"key of the scaling factor s (default {DEFAULT_SCALE_KEY}; 'none': no "
                   "scaling)")
    p.add_argument("--decoder-norm-tol", type=_tolerance, default=DEFAULT_DECODER_NORM_TOL,
                   help="refuse decoder rows further than this from unit norm (default "
                   f"{DEFAULT_DECODER_NORM_TOL:g}; 'none' skips the check)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import msae_plugin
    from msae_plugin.msae.reference import convert_reference_checkpoint

    msae_plugin.register()
    sae = convert_reference_checkpoint(
        args.reference, args.out_dir, k_levels=args.k_levels, hook_name=args.hook_name,
        model_name=args.model_name, tied=args.tied, mean_key=args.mean_key,
        scale_key=args.scale_key, decoder_norm_tol=args.decoder_norm_tol,
    )
    cfg = sae.cfg
    print(f"wrote {args.out_dir}: msae d_in={cfg.d_in} d_sae={cfg.d_sae} "
          f"k ladder {list(cfg.ladder)}")
    print(f"input mean/scale from the file: |mu| = {float(sae.input_mean.norm()):.4g}, "
          f"s = {float(sae.input_scale):.4g}")
    if cfg.metadata.hook_name:
        print(f"hook: {cfg.metadata.hook_name}  model: {cfg.metadata.model_name}")
    return 0
