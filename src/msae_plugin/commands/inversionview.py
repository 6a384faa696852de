"""``msae inversionview``: read what an activation encodes by sampling its ε-preimage with a
trained InversionView decoder (docs/inversionview.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inversionview",
        help="sample inputs that produce (nearly) the same activation; table and HTML page",
        description="Take the activation of INPUT at --site and --position of a probed model "
        "(or a raw activation from --activation), sample --n inputs from the trained "
        "InversionView decoder with the paper's (temperature, noise) plan, run each through "
        "the probed model and mark it in or out of the ε-preimage. Prints a table; --html "
        "writes a page with the query position highlighted.",
    )
    p.add_argument("input", nargs="?", default=None,
                   help="the query input, e.g. '123+456=579' for the addition release")
    p.add_argument("--release", default="addition",
                   help="probed model + decoder bundle (default: the shipped 'addition')")
    p.add_argument("--decoder-dir", type=Path, default=None,
                   help="use this decoder checkpoint instead of the shipped one")
    p.add_argument("--site", default="blocks.0.hook_resid_post",
                   help="hook (or per-head site like blocks.0.attn.hook_result.3) to read")
    p.add_argument("--position", type=int, default=None,
                   help="query position in INPUT (default: the '=' position for addition)")
    p.add_argument("--activation", type=Path, default=None,
                   help="a raw activation (torch .pt holding a 1-D tensor) instead of INPUT")
    p.add_argument("--n", type=int, default=64, help="samples to draw (default 64)")
    p.add_argument("--epsilon", type=float, default=0.1, help="preimage threshold (0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=20, help="rows in the printed table")
    p.add_argument("--html", type=Path, default=None, help="write an HTML view here")
    p.add_argument("--list-sites", action="store_true", help="print the decoder's sites and exit")
    p.set_defaults(func=run)


def _fail(msg: str) -> int:
    print(f"msae inversionview: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import torch

    from msae_plugin.inversionview.preimage import activations_at, check_epsilon
    from msae_plugin.inversionview.releases import load_release
    from msae_plugin.inversionview.sampling import sample_preimage, token_contrast
    from msae_plugin.inversionview.views import render_html, render_table

    try:
        check_epsilon(args.epsilon)
        if args.n < 1:
            raise ValueError(f"--n must be ≥ 1, got {args.n}")
        rel = load_release(args.release, args.decoder_dir)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    if args.list_sites:
        print("\n".join(rel.sites))
        return 0
    if args.site not in rel.sites:
        import difflib

        near = difflib.get_close_matches(args.site, rel.sites, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        return _fail(f"the decoder was not trained on site {args.site!r}.{hint} "
                     "Its sites: --list-sites")
    if (args.input is None) == (args.activation is None):
        return _fail("give exactly one of INPUT or --activation")
    if args.activation is not None:
        try:
            query = torch.load(args.activation, weights_only=True)
        except Exception as exc:  # torch raises several types for unreadable files
            return _fail(f"cannot read {args.activation} as a torch tensor file ({exc})")
        if not torch.is_tensor(query) or query.dim() != 1:
            return _fail(f"{args.activation} must hold one 1-D activation vector")
        query_tokens: list[int] = []
        baseline = None
        position = -1
        query_text = f"raw activation from {args.activation}"
    else:
        if not args.input.strip():
            return _fail("the input is empty; give e.g. '123+456=579'")
        try:
            query_tokens = rel.encode(args.input)
        except ValueError as exc:
            return _fail(str(exc))
        n_ctx = rel.decoder.cfg.n_ctx
        if len(query_tokens) > n_ctx:
            return _fail(f"the input has {len(query_tokens)} tokens; the decoder handles at "
                         f"most n_ctx={n_ctx}")
        position = args.position
        if position is None:
            position = 8 if args.release == "addition" else len(query_tokens) - 1
        real = [t for t in query_tokens if t != rel.decoder.cfg.pad_id]
        if not 0 <= position < len(real):
            return _fail(f"--position {position} is outside the input (0..{len(real) - 1})")
        acts = activations_at(rel.probed, torch.tensor([query_tokens]), args.site)
        query = acts[0, position]
        baseline = acts[0, 0]  # BOS: the same site with no input information
        query_tokens = real
        query_text = rel.decode(real)
    try:
        scored = sample_preimage(rel.decoder, rel.probed, rel.sites, args.site,
                                 query.float(), n=args.n, epsilon=args.epsilon, seed=args.seed)
    except ValueError as exc:
        return _fail(str(exc))
    print(f"site {args.site}")
    print(render_table(scored, rel.decode, query_text, position, args.epsilon, args.limit))
    if args.html is not None:
        contrast = None
        if baseline is not None:
            contrast = token_contrast(rel.decoder, [c.tokens for c in scored],
                                      rel.sites.index(args.site), query.float(), baseline)
        page = render_html(scored, rel.decode, query_tokens, position, args.site, args.epsilon,
                           title=f"InversionView: {query_text} @ {args.site}",
                           contrast=contrast)
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(page)
        print(f"wrote {args.html}")
    return 0
