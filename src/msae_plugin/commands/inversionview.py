"""``msae inversionview``: read what an activation encodes by sampling its ε-preimage with a
trained InversionView decoder (docs/inversionview.md)."""

from __future__ import annotations

import argparse
import os
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
    """Report the project's known errors as one ``error:`` line (exit 2), whichever CLI
    entry point calls this."""
    from msae_plugin.errors import CheckpointError, InversionViewError, ModelInputError

    try:
        return _run(args)
    except (InversionViewError, CheckpointError, ModelInputError, ValueError,
            FileNotFoundError) as exc:
        return _fail(str(exc))


def prepare_output(path: Path) -> None:
    """Make sure ``--html`` can be written *before* any sampling: create its folder, and refuse
    a path that is a folder or lies under a file (otherwise the page would fail to save after
    all the work)."""
    from msae_plugin.errors import InversionViewError
    from msae_plugin.preflight import ensure_writable_dir

    if path.is_dir():
        raise InversionViewError(
            f"--html {path} is a folder; give a file name, e.g. --html {path / 'view.html'}"
        )
    ensure_writable_dir(
        path.parent, f"cannot write --html {path}: its folder {path.parent}",
        "Choose a path in a folder you can write to (it is created when missing).",
        error=InversionViewError,
    )
    if path.exists() and not os.access(path, os.W_OK):
        raise InversionViewError(
            f"cannot write --html {path}: permission denied; choose a path you can write to"
        )


def load_activation(path: Path):
    """A raw query activation from a torch file, loaded tensors-only (a crafted pickle cannot
    run code) and checked to be one finite, non-zero vector."""
    import torch

    from msae_plugin.errors import QueryActivationError
    from msae_plugin.inversionview.preimage import check_query
    from msae_plugin.safe_load import load_torch_file

    if not path.is_file():
        raise QueryActivationError(f"--activation {path} does not exist or is not a file")
    query = load_torch_file(path, "load --activation",
                            "Save the activation vector with torch.save(vector, path)")
    if not torch.is_tensor(query) or query.dim() != 1:
        raise QueryActivationError(
            f"--activation {path} must hold one 1-D activation vector (torch.save(acts[0, pos], "
            "path)), got "
            + (f"shape {tuple(query.shape)}" if torch.is_tensor(query) else type(query).__name__)
        )
    return check_query(query.float())


def _run(args: argparse.Namespace) -> int:
    import torch

    from msae_plugin.errors import InversionViewError
    from msae_plugin.inversionview.preimage import activations_at, check_epsilon
    from msae_plugin.inversionview.releases import load_release
    from msae_plugin.inversionview.sampling import sample_preimage, token_contrast
    from msae_plugin.inversionview.views import render_html, render_table
    from msae_plugin.names import suggest

    # cheap checks first: nothing is loaded or sampled for a request that cannot succeed
    check_epsilon(args.epsilon)
    if args.n < 1:
        raise InversionViewError(f"--n must be ≥ 1, got {args.n}")
    if not args.list_sites and (args.input is None) == (args.activation is None):
        raise InversionViewError("give exactly one of INPUT or --activation")
    if args.html is not None:
        prepare_output(args.html)
    raw = None if args.activation is None or args.list_sites else load_activation(args.activation)
    rel = load_release(args.release, args.decoder_dir)
    if args.list_sites:
        print("\n".join(rel.sites))
        return 0
    if args.site not in rel.sites:
        raise InversionViewError(
            f"the decoder was not trained on site {args.site!r}.{suggest(args.site, rel.sites)} "
            "Its sites: --list-sites"
        )
    position: int | None
    if raw is not None:
        query = raw
        query_tokens: list[int] = []
        baseline = None
        position = None  # a raw vector has no position (and -1 would read as "the last one")
        query_text = f"raw activation from {args.activation}"
    else:
        if not args.input.strip():
            raise InversionViewError("the input is empty; give e.g. '123+456=579'")
        query_tokens = rel.encode(args.input)
        n_ctx = rel.decoder.cfg.n_ctx
        if len(query_tokens) > n_ctx:
            raise InversionViewError(
                f"the input has {len(query_tokens)} tokens; the decoder handles at most "
                f"n_ctx={n_ctx}"
            )
        real = [t for t in query_tokens if t != rel.decoder.cfg.pad_id]
        position = args.position
        if position is None:
            position = len(real) - 1 if rel.default_position is None else rel.default_position
        if not 0 <= position < len(real):
            raise InversionViewError(
                f"--position {position} is outside the input (0..{len(real) - 1})")
        _warn_untrained_position(position, rel.positions)
        acts = activations_at(rel.probed, torch.tensor([query_tokens]), args.site)
        query = acts[0, position]
        baseline = acts[0, 0]  # BOS: the same site with no input information
        query_tokens = real
        query_text = rel.decode(real)
    scored = sample_preimage(rel.decoder, rel.probed, rel.sites, args.site, query.float(),
                             n=args.n, epsilon=args.epsilon, seed=args.seed)
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
        args.html.write_text(page)
        print(f"wrote {args.html}")
    return 0


def _warn_untrained_position(position: int, trained: tuple[int, ...] | None) -> None:
    """A decoder trained only on some query positions reads others out of distribution: its
    samples then rarely land in the preimage, and 0 % would wrongly suggest the activation is
    unreadable. Say so on stderr (the run goes on: the user may want to see it)."""
    if trained is None or position in trained:
        return
    print(
        f"msae inversionview: warning: this decoder was trained only on queries at positions "
        f"{list(trained)}; position {position} was never a training query, so expect few or "
        "no samples inside the ε-preimage (that says nothing about the activation). Query one "
        "of those positions, or use a decoder trained on every position (e.g. "
        "scripts/train_addition_decoder.py --all-positions).",
        file=sys.stderr,
    )
