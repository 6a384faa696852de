"""``msae ablate-heads``: zero- or mean-ablate every attention head of a CLIP image tower and
report the change of zero-shot loss and accuracy on the digit scenes (docs/head-ablation.md)."""

from __future__ import annotations

import argparse
import sys

from msae_plugin.commands._common import non_negative_int, positive_int
from msae_plugin.vision.loading import EMBEDDED_MODELS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate-heads",
        help="ablate each attention head of a CLIP image tower; table, JSON and heat map",
        description="For every attention head of the image tower, zero it (or replace it by its "
        "mean over the images) through blocks.{layer}.attn.hook_z and measure the change of "
        "zero-shot cross-entropy loss and accuracy on held-out digit scenes. Writes "
        "heads_{mode}.md, heads_{mode}.json and heads_{mode}.png to --out.",
    )
    p.add_argument("--model", default=EMBEDDED_MODELS[0],
                   help=f"model name (default: the embedded {EMBEDDED_MODELS[0]!r}) or an "
                   "OpenCLIP name such as ViT-B-32")
    p.add_argument("--pretrained", default=None,
                   help="OpenCLIP pretrained tag or checkpoint path (not for the embedded model)")
    p.add_argument("--n-images", type=positive_int, default=500,
                   help="number of scenes (default 500)")
    p.add_argument("--mode", choices=("zero", "mean"), default="zero",
                   help="zero the head's output, or replace it by its per-position mean")
    p.add_argument("--out", default="head_ablation", help="output folder (default head_ablation)")
    p.add_argument("--layers", type=non_negative_int, nargs="+", default=None,
                   help="blocks to scan (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=250,
                   help="images per forward pass (default 250)")
    p.add_argument("--split", choices=("train", "test"), default="test",
                   help="digit split the scenes are drawn from (default: held-out test)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="scene seed (≥ 0)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--top", type=positive_int, default=10,
                   help="heads listed in the top table (default 10)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Errors a user can fix raise the project's exception classes; ``msae_plugin.cli.main``
    prints them as ``error: ...`` on stderr with exit status 2. Everything that can be checked
    cheaply (numbers in argparse, the output folder here) is checked before the model loads."""
    from msae_plugin.commands._common import (
        check_output_entries,
        prepare_output_dir,
        resolve_device,
    )
    from msae_plugin.embedded.dataset import make_digit_scenes, normalize
    from msae_plugin.embedded.zero_shot import build_zero_shot_classifier
    from msae_plugin.errors import UnsupportedModelError
    from msae_plugin.vision.head_ablation import head_ablation_scan
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP

    out = prepare_output_dir(args.out)
    stem = f"heads_{args.mode}"
    check_output_entries(out, files=(f"{stem}.md", f"{stem}.json", f"{stem}.png"))
    device = resolve_device(args.device)
    if args.pretrained is None and args.model not in EMBEDDED_MODELS:
        # open_clip builds the architecture with random weights when no tag is given: the scan
        # would run (minutes) and rank heads of an untrained network
        print(f"warning: --model {args.model} without --pretrained has random weights; the scan "
              "measures an untrained network (pass e.g. --pretrained openai)", file=sys.stderr)
    model = HookedOpenCLIP.from_pretrained(args.model, pretrained=args.pretrained, device=device)
    if model.text is None:
        raise UnsupportedModelError(
            f"{args.model} has no usable text tower for a zero-shot classifier "
            f"({model.text_unsupported_reason}); ablate-heads needs one. Pick a CLIP model with "
            "a standard text tower."
        )

    scenes = make_digit_scenes(args.n_images, split=args.split, seed=args.seed)
    if args.model in EMBEDDED_MODELS:
        images = normalize(scenes.images)
    else:  # resize to the model's input size, normalise with its mean/std
        images = model.preprocess(scenes.images)
    classifier = build_zero_shot_classifier(model.clip, model.tokenizer)
    res = head_ablation_scan(
        model, images, scenes.labels, classifier, mode=args.mode, layers=args.layers,
        batch_size=args.batch_size, progress=not args.no_progress,
    )
    res.extra.update({"split": args.split, "seed": args.seed, "device": device,
                      "pretrained": args.pretrained})

    md = res.to_markdown(top=args.top)
    (out / f"{stem}.md").write_text(md)
    res.to_json(out / f"{stem}.json")
    res.plot_heatmap(out / f"{stem}.png")
    print(md)
    print(f"{len(res.layers) * res.n_heads} heads x {res.n_images} images in {res.seconds:.1f} s")
    print(f"wrote {out / stem}.md, .json and .png")
    return 0
