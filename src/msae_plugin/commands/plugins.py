"""``msae plugins``: every registered name with the plugin and distribution that provided it."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plugins",
        help="list registered architectures, hooked models, decoders and releases with their providers",
        description="List every name registered through msae-plugin's entry points.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import msae_plugin
    from msae_plugin.registration import REGISTRATIONS, resolve_releases

    msae_plugin.register()
    resolve_releases()  # a release whose name SAELens already uses is dropped, with a warning
    regs = dict(REGISTRATIONS)
    if not regs:
        print("no plugins registered")
        return 0
    rows = sorted(regs.values(), key=lambda r: (r.kind, r.name))
    width = max(len(r.name) for r in rows)
    kw = max(len(r.kind) for r in rows)
    print(f"{'KIND':<{kw}}  {'NAME':<{width}}  PLUGIN / DISTRIBUTION")
    for r in rows:
        print(f"{r.kind:<{kw}}  {r.name:<{width}}  {r.plugin} / {r.distribution}")
    return 0
