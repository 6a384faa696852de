"""The ``msae`` command line. Each sub-command lives in ``msae_plugin.commands.<name>``."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": "msae_plugin.commands.demo",
    "plugins": "msae_plugin.commands.plugins",
    "check": "msae_plugin.commands.check",
    "train": "msae_plugin.commands.train",
    "ablate-heads": "msae_plugin.commands.ablate_heads",
    "inversionview": "msae_plugin.commands.inversionview",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msae",
        description="msae-plugin: Matryoshka SAEs and friends inside SAELens.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
