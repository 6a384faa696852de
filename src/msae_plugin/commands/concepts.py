"""``msae concepts SAE_DIR``: name every latent of an SAE on a CLIP model with a vocabulary
(direction-based on embedding hooks, activation-based elsewhere), print the best-scoring names,
and write ``concepts.json`` and ``concepts.png`` (valid-concept ratio per ladder level)
to --out (docs/concepts.md)."""

from __future__ import annotations

import argparse

from msae_plugin.commands._common import non_negative_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "concepts",
        help="name SAE latents with a vocabulary; table, JSON and per-level plot",
        description="Name each latent of the SAE in SAE_DIR with the vocabulary word whose text "
        "embedding is closest (cosine) to the latent's decoder direction (SAEs on "
        "hook_image_embed / text.hook_text_embed) or to the mean embedding of its "
        "top-activating digit scenes (other hooks). Writes concepts.json and concepts.png.",
    )
    p.add_argument("sae_dir", metavar="SAE_DIR", help="an SAELens SAE folder (cfg.json + weights)")
    p.add_argument("--vocab", default=None,
                   help="vocabulary file, one word or phrase per line (default: the embedded "
                   "model's caption vocabulary)")
    p.add_argument("--top", type=positive_int, default=20,
                   help="named latents listed in the table (default 20)")
    p.add_argument("--out", default="concepts", help="output folder (default concepts)")
    p.add_argument("--method", choices=("auto", "direction", "activation"), default="auto",
                   help="naming path (default auto: direction on embedding hooks)")
    p.add_argument("--n-images", type=positive_int, default=2000,
                   help="held-out digit scenes for activations and ladder levels (default 2000)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="scene seed (≥ 0)")
    p.add_argument("--pretrained", default=None,
                   help="OpenCLIP pretrained tag, for SAEs on an OpenCLIP model")
    p.set_defaults(func=run)


def format_table(result, top: int) -> str:
    """Markdown table of the ``top`` valid names by score (all names if none is valid)."""
    rows = sorted(result.valid() or result.latents, key=lambda x: -x.score)[:top]
    lines = ["| latent | word | score | second | margin | valid | min k |",
             "|---:|---|---:|---|---:|:---:|---:|"]
    for x in rows:
        lines.append(f"| {x.latent} | {x.word} | {x.score:.3f} | {x.second} | {x.margin:.3f} "
                     f"| {'yes' if x.valid else 'no'} | {x.min_level if x.min_level else '-'} |")
    return "\n".join(lines)


def format_levels(result) -> str:
    lines = ["| k | latents first selected at k | valid | valid ratio |", "|---:|---:|---:|---:|"]
    for r in result.level_ratios():
        ratio = "-" if r["valid_ratio"] is None else f"{r['valid_ratio']:.2f}"
        lines.append(f"| {r['k']} | {r['n_latents']} | {r['n_valid']} | {ratio} |")
    return "\n".join(lines)


def plot_levels(result, path) -> None:
    """Valid-concept ratio per ladder level (bars), or the score histogram without a ladder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    rows = [r for r in result.level_ratios() if r["n_latents"]]
    if rows:
        ax.bar([str(r["k"]) for r in rows], [r["valid_ratio"] for r in rows])
        for i, r in enumerate(rows):
            ax.text(i, r["valid_ratio"], f"{r['n_valid']}/{r['n_latents']}", ha="center",
                    va="bottom", fontsize=8)
        ax.set_xlabel("smallest ladder k selecting the latent")
        ax.set_ylabel("valid-concept ratio")
        ax.set_ylim(0, 1.1)
    else:
        ax.hist([x.score for x in result.latents], bins=30)
        ax.axvline(result.rule["min_score"], color="k", ls="--")
        ax.set_xlabel("best cosine")
        ax.set_ylabel("latents")
    ax.set_title(f"{result.method}-based names, {result.hook_name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Cheap checks (output folder, vocabulary file) run before the SAE and model load."""
    import json

    from sae_lens import SAE

    from msae_plugin.commands._common import check_output_entries, prepare_output_dir
    from msae_plugin.concepts import load_vocabulary, name_concepts
    from msae_plugin.embedded.dataset import make_digit_scenes
    from msae_plugin.msae.checkpoint_check import validate_checkpoint
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP
    from msae_plugin.vision.loading import EMBEDDED_MODELS

    out = prepare_output_dir(args.out)
    check_output_entries(out, files=("concepts.json", "concepts.png"))
    vocabulary = load_vocabulary(args.vocab)
    validate_checkpoint(args.sae_dir)  # names the missing/damaged file and the fix
    sae = SAE.load_from_disk(args.sae_dir).eval()
    model_name = getattr(sae.cfg.metadata, "model_name", None) or EMBEDDED_MODELS[0]
    model = HookedOpenCLIP.from_pretrained(model_name, pretrained=args.pretrained).eval()
    images = model.preprocess(make_digit_scenes(args.n_images, "test", seed=args.seed).images)
    result = name_concepts(sae, model, vocabulary, images=images, method=args.method)

    (out / "concepts.json").write_text(json.dumps(result.to_dict(), indent=1))
    plot_levels(result, out / "concepts.png")
    print(format_table(result, args.top))
    if result.ladder:
        print()
        print(format_levels(result))
    print(f"\n{len(result.valid())} of {len(result.latents)} latents validly named "
          f"({result.method}-based, rule: score ≥ {result.rule['min_score']}, margin ≥ "
          f"{result.rule['min_margin']})")
    print(f"wrote {out / 'concepts.json'} and {out / 'concepts.png'}")
    return 0
