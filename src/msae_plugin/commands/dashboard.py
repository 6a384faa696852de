"""``msae dashboard SAE``: write a static, offline feature dashboard of an SAE at a vision hook
(docs/dashboard.md). Thin over :func:`msae_plugin.dashboard.build_dashboard`."""

from __future__ import annotations

import argparse

from msae_plugin.commands._common import non_negative_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        help="write a static feature dashboard (HTML, opens offline in any browser)",
        description="Write a self-contained site (index.html + data scripts, no network) with "
        "one card per latent of the SAE: top-activating images with patch heat maps, "
        "histogram, densities, concept name and top words, nearest latents, class "
        "distribution, zero-shot logit effects, MSAE ladder levels. SAE: an SAELens folder "
        "or RELEASE:SAE_ID (e.g. msae-tiny-clip-msae:blocks.2.hook_resid_post).",
    )
    p.add_argument("sae", metavar="SAE", help="SAE folder, or RELEASE:SAE_ID of a registered release")
    p.add_argument("--out", default="dashboard", help="output folder (default dashboard)")
    p.add_argument("--n-images", type=positive_int, default=2000,
                   help="images to read (default 2000 held-out digit scenes)")
    p.add_argument("--images", default=None, metavar="FOLDER",
                   help="image files to use instead of digit scenes (sub-folders = classes)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="scene / sampling seed")
    p.add_argument("--page-size", type=positive_int, default=64,
                   help="latents per data file (default 64)")
    p.add_argument("--k", type=positive_int, default=None,
                   help="read an MSAE at this ladder k (default: its ReLU path)")
    p.add_argument("--vocab", default=None, help="vocabulary file for concept names")
    p.add_argument("--pretrained", default=None,
                   help="OpenCLIP pretrained tag, for SAEs on an OpenCLIP model")
    p.set_defaults(func=run)


def _folder_images(folder: str, n: int, model):
    """First ``n`` images of a folder (sorted), labels from their sub-folder names."""
    from pathlib import Path

    import torch

    from msae_plugin.vision.image_sources import FolderImageSource

    src = FolderImageSource(folder, shuffle=False)
    files = src.files[:n]
    classes = sorted({p.parent.relative_to(src.folder).as_posix() for p in files})
    labels = None
    if len(classes) > 1 or classes != ["."]:
        labels = torch.tensor([classes.index(p.parent.relative_to(src.folder).as_posix())
                               for p in files])
    src.files = files
    images = torch.cat(list(src.batches(256, model)))[:n]
    names = [Path(c).name for c in classes] if labels is not None else None
    return images, labels, names


def run(args: argparse.Namespace) -> int:
    """Cheap checks (output folder, page size, vocabulary) run before models load."""
    import time

    from msae_plugin.commands._common import load_sae, prepare_output_dir
    from msae_plugin.concepts import load_vocabulary
    from msae_plugin.dashboard import build_dashboard, check_page_size, site_size
    from msae_plugin.dashboard.site import check_site_dir
    from msae_plugin.embedded.dataset import CLASS_NAMES, make_digit_scenes
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP
    from msae_plugin.vision.loading import EMBEDDED_MODELS

    out = prepare_output_dir(args.out)
    check_site_dir(out)  # a folder holding other files is refused, not deleted
    vocabulary = load_vocabulary(args.vocab)
    sae = load_sae(args.sae)
    check_page_size(sae.cfg.d_sae, args.page_size)
    model_name = getattr(sae.cfg.metadata, "model_name", None) or EMBEDDED_MODELS[0]
    model = HookedOpenCLIP.from_pretrained(model_name, pretrained=args.pretrained).eval()
    if args.images:
        images, labels, class_names = _folder_images(args.images, args.n_images, model)
    else:
        scenes = make_digit_scenes(args.n_images, "test", seed=args.seed)
        images, labels, class_names = model.preprocess(scenes.images), scenes.labels, CLASS_NAMES
    t0 = time.perf_counter()
    index = build_dashboard(out, sae, model, images, labels=labels, class_names=class_names,
                            vocabulary=vocabulary, k=args.k, page_size=args.page_size,
                            seed=args.seed, source=args.sae)
    took = time.perf_counter() - t0
    print(f"wrote {index} ({sae.cfg.d_sae} latents, {len(images)} images, "
          f"{site_size(out) / 1e6:.1f} MB, {took:.1f} s); open it in a browser "
          f"(file://{index.resolve()})")
    return 0
