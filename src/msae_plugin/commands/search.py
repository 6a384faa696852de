"""``msae search SAE``: concept-based similarity search (MSAE paper §5, docs/concepts.md) from
the command line. Queries (gallery images or a text prompt) are edited along an SAE concept
(``--concept WORD`` or ``--latent ID ...``) and matched by cosine against held-out digit scenes
of the SAE's CLIP model; the command prints a table per query and a summary against the
unedited search, and writes ``search.json`` and ``search.png`` to --out.

Everything that can be checked without the model (output folder, SAE, hook, latent ids, image
indices) is checked before the model loads and the gallery is embedded, so a typo costs a
second."""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msae_plugin.commands._common import finite_float, non_negative_int, positive_int

#: the hook whose activations are the CLIP image embeddings the search edits and compares
SEARCH_HOOK = "hook_image_embed"
#: attributes shown in the table (parity, loop and stroke follow from the digit)
TABLE_ATTRIBUTES = ("colour", "rotation", "thickness", "background")
#: queries drawn in search.png (the JSON and the tables hold all of them)
MAX_PLOTTED_QUERIES = 6
FILES = ("search.json", "search.png")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="concept-based similarity search: edit queries along an SAE concept, retrieve scenes",
        description="Retrieve the held-out digit scenes closest (cosine, CLIP space) to each query, "
        "with and without an edit of the query along an SAE concept: x' = x + decode(z') - "
        "decode(z), where z' adds --strength to the concept's latents (--mode add) or zeroes them "
        "(--mode remove). SAE is an SAELens SAE folder or RELEASE:SAE_ID (e.g. "
        "msae-tiny-clip-msae:hook_image_embed) on hook_image_embed. Writes search.json and "
        "search.png (queries, then top results before / after the edit).",
    )
    p.add_argument("sae", metavar="SAE_DIR_OR_RELEASE",
                   help="an SAELens SAE folder, or RELEASE:SAE_ID for SAE.from_pretrained")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--image-index", type=non_negative_int, nargs="+", metavar="I",
                       help="gallery images to use as queries (each left out of its own results)")
    query.add_argument("--text", help="a text prompt to search with, e.g. 'a photo of a seven'")
    concept = p.add_mutually_exclusive_group()
    concept.add_argument("--concept", metavar="WORD",
                         help="edit along the latents validly named WORD (direction-based names)")
    concept.add_argument("--latent", type=non_negative_int, nargs="+", metavar="ID",
                         help="edit along these latent ids")
    p.add_argument("--mode", choices=("add", "remove"), default=None,
                   help="add --strength to the concept's codes, or set them to zero (default add)")
    p.add_argument("--strength", type=finite_float, default=None,
                   help="code units added in --mode add (default: the concept latents' largest "
                   "code on the gallery)")
    p.add_argument("--top", type=positive_int, default=10, help="results per query (default 10)")
    p.add_argument("--gallery-size", type=positive_int, default=1000,
                   help="held-out digit scenes in the gallery (default 1000)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="gallery scene seed (≥ 0)")
    p.add_argument("--out", default="search", help="output folder (default search)")
    p.add_argument("--pretrained", default=None,
                   help="OpenCLIP pretrained tag, for SAEs on an OpenCLIP model")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- checks and loading


def _search_error(message: str) -> Exception:
    from msae_plugin.errors import ConceptSearchError

    return ConceptSearchError(message)


def check_request(args: argparse.Namespace) -> None:
    """Option combinations that would run but mean nothing: refused before any loading."""
    concept = args.concept is not None or args.latent is not None
    if not concept and (args.mode is not None or args.strength is not None):
        given = " and ".join(o for o, v in (("--mode", args.mode), ("--strength", args.strength))
                             if v is not None)
        raise _search_error(f"{given} edit(s) a concept, but neither --concept nor --latent "
                            "was given. Add one, or leave the option out for a plain CLIP search.")
    if args.mode == "remove" and args.strength is not None:
        raise _search_error("--strength is for --mode add; --mode remove sets the concept's "
                            "codes to zero. Leave --strength out.")
    if args.image_index is not None:
        bad = [i for i in args.image_index if i >= args.gallery_size]
        if bad:
            raise _search_error(
                f"--image-index {' '.join(map(str, bad))}: the gallery has {args.gallery_size} "
                f"images (indices 0 to {args.gallery_size - 1}). Pass smaller indices or a "
                "larger --gallery-size."
            )
        if args.top >= args.gallery_size:
            raise _search_error(
                f"--top {args.top}: an image query has only {args.gallery_size - 1} other gallery "
                "images. Pass a smaller --top or a larger --gallery-size."
            )
    elif args.top > args.gallery_size:
        raise _search_error(f"--top {args.top} is more than the gallery's {args.gallery_size} "
                            "images. Pass a smaller --top or a larger --gallery-size.")
    if args.text is not None and not args.text.strip():
        raise _search_error("--text is empty; pass a prompt such as 'a photo of a seven'.")


def load_sae(spec: str) -> Any:
    """The SAE to search with (``_common.load_sae``, errors as ``ConceptSearchError``)."""
    from msae_plugin.commands._common import load_sae as load
    from msae_plugin.errors import ConceptSearchError

    return load(spec, ConceptSearchError, f"msae-tiny-clip-msae:{SEARCH_HOOK}")


def check_sae(sae: Any, spec: str, latents: list[int] | None) -> None:
    """The SAE must read CLIP image embeddings, and --latent ids must exist in it."""
    hook = str(getattr(sae.cfg.metadata, "hook_name", None) or "")
    if hook != SEARCH_HOOK:
        raise _search_error(
            f"SAE {spec} reads {hook or 'an unknown hook'!s}, but msae search edits CLIP image "
            f"embeddings and compares them by cosine, so it needs an SAE on {SEARCH_HOOK}. Use "
            f"msae-tiny-clip-msae:{SEARCH_HOOK} or an SAE trained on {SEARCH_HOOK}."
        )
    d_sae = int(sae.cfg.d_sae)
    bad = [j for j in latents or [] if j >= d_sae]
    if bad:
        raise _search_error(
            f"--latent {' '.join(map(str, bad))}: SAE {spec} has {d_sae} latents (ids 0 to "
            f"{d_sae - 1})."
        )


# --------------------------------------------------------------------------- the concept


def concept_attribute(word: str, scenes: Any) -> tuple[str, int] | None:
    """The scene attribute ``(name, code)`` a concept word stands for (``"red"`` -> colour red,
    ``"seven"`` -> label 7, ``"dark background"`` -> background dark), or ``None``: the words of
    the shipped vocabulary name attribute values, sometimes followed by the attribute's name."""
    from msae_plugin.embedded.dataset import CLASS_NAMES

    if word in CLASS_NAMES:
        return "label", CLASS_NAMES.index(word)
    for attr, values in scenes.attribute_names.items():
        for code, value in enumerate(values):
            if word in (value, f"{value} {attr}", f"{value} {attr}s"):
                return attr, code
    return None


def _codes(sae: Any, x: Any) -> Any:
    """All positive codes (no TopK cap for ladder SAEs): the scale the edit is made in."""
    x = x.to(sae.dtype)
    return sae.encode(x, k=sae.cfg.d_sae) if getattr(sae.cfg, "ladder", None) else sae.encode(x)


# --------------------------------------------------------------------------- the search


@dataclass
class QueryResult:
    """One query's results without (``plain``) and with (``edited``) the edit."""

    query: dict[str, Any]
    plain: list[int]
    plain_scores: list[float]
    edited: list[int] | None
    edited_scores: list[float] | None


def _scene(scenes: Any, i: int) -> dict[str, Any]:
    return {"index": i, "label": int(scenes.labels[i]),
            "attributes": {k: scenes.attribute_names[k][int(v[i])]
                           for k, v in scenes.attributes.items()}}


def _drop_self(indices: Any, scores: Any, self_index: int | None, top: int):
    pairs = [(int(i), float(s)) for i, s in zip(indices, scores, strict=True) if int(i) != self_index]
    pairs = pairs[:top]
    return [i for i, _ in pairs], [s for _, s in pairs]


def search_all(sae: Any, queries: Any, self_indices: list[int | None], gallery: Any,
               latents: list[int] | None, mode: str, strength: float, top: int,
               query_info: list[dict[str, Any]]) -> list[QueryResult]:
    """Plain and edited search; an image query is searched for one more result, then left out
    of its own list (it would always be its own best match)."""
    from msae_plugin.concepts.search import concept_search

    extra = 1 if any(i is not None for i in self_indices) else 0
    plain = concept_search(sae, queries, gallery, top=top + extra)
    edited = (concept_search(sae, queries, gallery, latents, mode, strength, top=top + extra)
              if latents else None)
    out = []
    for q, self_index in enumerate(self_indices):
        p_idx, p_sc = _drop_self(plain.indices[q], plain.scores[q], self_index, top)
        e_idx = e_sc = None
        if edited is not None:
            e_idx, e_sc = _drop_self(edited.indices[q], edited.scores[q], self_index, top)
        out.append(QueryResult(query_info[q], p_idx, p_sc, e_idx, e_sc))
    return out


def _matches(scenes: Any, indices: list[int], target: tuple[str, int]) -> list[bool]:
    attr, code = target
    values = scenes.labels if attr == "label" else scenes.attributes[attr]
    return [int(values[i]) == code for i in indices]


def _share(scenes: Any, indices: list[int], target: tuple[str, int]) -> float:
    hits = _matches(scenes, indices, target)
    return sum(hits) / len(hits) if hits else 0.0


# --------------------------------------------------------------------------- output


def _attr_cells(info: dict[str, Any]) -> str:
    return " | ".join(info["attributes"][a] for a in TABLE_ATTRIBUTES)


def format_query_table(scenes: Any, indices: list[int], scores: list[float]) -> str:
    """Markdown table of one query's results: rank, gallery index, cosine, label, attributes."""
    lines = ["| rank | index | cosine | label | " + " | ".join(TABLE_ATTRIBUTES) + " |",
             "|---:|---:|---:|---:|" + "---|" * len(TABLE_ATTRIBUTES)]
    for rank, (i, s) in enumerate(zip(indices, scores, strict=True), 1):
        info = _scene(scenes, i)
        lines.append(f"| {rank} | {i} | {s:.3f} | {info['label']} | {_attr_cells(info)} |")
    return "\n".join(lines)


def _result_rows(scenes: Any, indices: list[int], scores: list[float]) -> list[dict[str, Any]]:
    return [{"rank": k + 1, "cosine": round(s, 5), **_scene(scenes, i)}
            for k, (i, s) in enumerate(zip(indices, scores, strict=True))]


def _describe_query(info: dict[str, Any]) -> str:
    if info["kind"] == "text":
        return f"text {info['text']!r}"
    attrs = ", ".join(info["attributes"][a] for a in TABLE_ATTRIBUTES)
    return f"gallery image {info['index']} (digit {info['label']}, {attrs})"


def plot_grid(results: list[QueryResult], scenes: Any, path: Path, edit_label: str | None,
              target: tuple[str, int] | None) -> None:
    """Per query a row of the query then its results without the edit, and (with a concept) a
    second row with the edit; results carrying the concept's attribute get an orange frame.

    Each row is one image strip on one axes (not one axes per scene): with up to 12 rows of 11
    scenes, per-scene axes made matplotlib the slowest step of the command."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.patches import Rectangle

    shown = results[:MAX_PLOTTED_QUERIES]
    rows = [(r, "no edit", r.plain, r.plain_scores) for r in shown]
    if edit_label is not None:
        rows = [row for r in shown for row in ((r, "no edit", r.plain, r.plain_scores),
                                               (r, edit_label, r.edited, r.edited_scores))]
    size = scenes.images.shape[-1]
    pad = size // 4
    cell = size + pad
    n_cols = 1 + max(len(r.plain) for r in shown)
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.75 * n_cols + 0.6, 0.95 * len(rows)),
                             squeeze=False)
    for (res, label, indices, scores), (ax,) in zip(rows, axes, strict=True):
        strip = torch.ones(3, size, n_cols * cell - pad)
        if res.query["kind"] == "image":
            strip[:, :, :size] = scenes.images[res.query["index"]]
            ax.text(size / 2, -2, f"query #{res.query['index']}", ha="center", fontsize=6)
        else:
            ax.text(size / 2, size / 2, textwrap.fill(res.query["text"], 12), ha="center",
                    va="center", fontsize=5)
            ax.text(size / 2, -2, "text query", ha="center", fontsize=6)
        hits = _matches(scenes, indices, target) if target is not None else [False] * len(indices)
        for col, (i, score, hit) in enumerate(zip(indices, scores, hits, strict=True), 1):
            x0 = col * cell
            strip[:, :, x0:x0 + size] = scenes.images[i]
            ax.text(x0 + size / 2, -2, f"#{i} {score:.2f}", ha="center", fontsize=5)
            if hit:
                ax.add_patch(Rectangle((x0 - 1.5, -0.5), size + 2, size, fill=False,
                                       edgecolor="orange", linewidth=2))
        ax.imshow(strip.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_ylabel(label, fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- the command


def run(args: argparse.Namespace) -> int:
    """Output folder, options, SAE, hook and ids are checked before the model and gallery."""
    import json

    import torch

    from msae_plugin.commands._common import check_output_entries, prepare_output_dir
    from msae_plugin.concepts import load_vocabulary, name_concepts, text_query
    from msae_plugin.embedded.dataset import make_digit_scenes
    from msae_plugin.vision.hooked_clip import HookedOpenCLIP
    from msae_plugin.vision.loading import EMBEDDED_MODELS

    out = prepare_output_dir(args.out)
    check_output_entries(out, files=FILES)
    check_request(args)
    sae = load_sae(args.sae)
    latents = sorted(set(args.latent)) if args.latent else None
    check_sae(sae, args.sae, latents)
    mode = args.mode or "add"

    model_name = getattr(sae.cfg.metadata, "model_name", None) or EMBEDDED_MODELS[0]
    model = HookedOpenCLIP.from_pretrained(model_name, pretrained=args.pretrained).eval()
    scenes = make_digit_scenes(args.gallery_size, "test", seed=args.seed)
    images = model.preprocess(scenes.images)
    with torch.no_grad():
        gallery = model.encode_image(images).float().cpu()

    if args.concept is not None:
        # direction-based names read the decoder only; images would just mark dead latents,
        # at the cost of a second pass over the gallery (a latent that never fires leaves the
        # default strength at 0, which is refused below)
        names = name_concepts(sae, model, load_vocabulary(), method="direction")
        latents = names.latents_named(args.concept)  # unknown: the nearest valid names
    target = concept_attribute(args.concept, scenes) if args.concept is not None else None

    strength, strength_source = args.strength, "--strength"
    if latents and mode == "add" and strength is None:
        with torch.no_grad():
            strength = float(_codes(sae, gallery)[:, latents].max())
        strength_source = "largest code of the concept's latents on the gallery"
        if strength <= 0:
            raise _search_error(
                f"latents {latents} never fire on the {args.gallery_size} gallery images, so "
                "there is no natural strength; pass --strength."
            )

    if args.text is not None:
        queries = text_query(model, args.text)
        self_indices: list[int | None] = [None]
        info = [{"kind": "text", "text": args.text}]
    else:
        queries = gallery[args.image_index]
        self_indices = list(args.image_index)
        info = [{"kind": "image", **_scene(scenes, i)} for i in args.image_index]
    results = search_all(sae, queries, self_indices, gallery, latents, mode,
                         strength if strength is not None else 0.0, args.top, info)

    concept_text = (repr(args.concept) if args.concept is not None
                    else "latent" + ("s " if len(latents or []) > 1 else " ")
                    + ", ".join(map(str, latents or [])))
    edit_label = None
    if latents:
        edit_label = (f"{concept_text} added" if mode == "add" else f"{concept_text} removed")
        print(f"edit: {mode} {concept_text} (latents {', '.join(map(str, latents))})"
              + (f", strength {strength:.3f} ({strength_source})" if mode == "add" else ""))
    print(f"gallery: {args.gallery_size} held-out digit scenes (seed {args.seed}), "
          f"embedded by {model_name}\n")

    summary: dict[str, Any] = {}
    overlaps, shares_plain, shares_edited = [], [], []
    for res in results:
        print(f"query: {_describe_query(res.query)}" + (f", {edit_label}" if latents else ""))
        shown_idx = res.edited if latents else res.plain
        shown_sc = res.edited_scores if latents else res.plain_scores
        print(format_query_table(scenes, shown_idx, shown_sc))
        if latents:
            overlap = len(set(res.plain) & set(res.edited))
            overlaps.append(overlap)
            line = f"{overlap} of {args.top} results also in the unedited top {args.top}"
            if target is not None:
                sp, se = _share(scenes, res.plain, target), _share(scenes, res.edited, target)
                shares_plain.append(sp)
                shares_edited.append(se)
                res.query["share_plain"], res.query["share_edited"] = sp, se
                line = f"{args.concept} share {sp:.2f} unedited -> {se:.2f} edited; " + line
            res.query["overlap"] = overlap
            print(line)
        print()

    if latents:
        summary["mean_overlap"] = sum(overlaps) / len(overlaps)
        line = (f"summary over {len(results)} quer{'y' if len(results) == 1 else 'ies'}: "
                f"{summary['mean_overlap']:.1f} of the top {args.top} shared with the unedited "
                "search")
        if target is not None:
            summary["share_plain"] = sum(shares_plain) / len(shares_plain)
            summary["share_edited"] = sum(shares_edited) / len(shares_edited)
            line = (f"summary over {len(results)} quer{'y' if len(results) == 1 else 'ies'}: "
                    f"{args.concept} share of the top {args.top} {summary['share_plain']:.2f} "
                    f"unedited -> {summary['share_edited']:.2f} with {edit_label}; "
                    f"{summary['mean_overlap']:.1f} of {args.top} shared with the unedited search")
        print(line)
    if target is not None:
        summary["attribute"] = {"name": target[0], "code": target[1]}

    record = {
        "sae": args.sae, "hook_name": SEARCH_HOOK, "model_name": model_name,
        "gallery": {"size": args.gallery_size, "split": "test", "seed": args.seed},
        "concept": args.concept, "latents": latents, "mode": mode if latents else None,
        "strength": strength if latents and mode == "add" else None,
        "strength_source": strength_source if latents and mode == "add" else None,
        "top": args.top, "summary": summary,
        "queries": [
            {**r.query,
             "plain": _result_rows(scenes, r.plain, r.plain_scores),
             "edited": None if r.edited is None else
             _result_rows(scenes, r.edited, r.edited_scores)}
            for r in results
        ],
    }
    (out / "search.json").write_text(json.dumps(record, indent=1))
    plot_grid(results, scenes, out / "search.png", edit_label, target)
    print(f"wrote {out / 'search.json'} and {out / 'search.png'}")
    return 0
