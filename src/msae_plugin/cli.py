"""The ``msae`` command line. Each sub-command lives in ``msae_plugin.commands.<name>``.

Error policy (the same for every sub-command):

* argparse's own usage errors (unknown option, bad type, ``--top -2``) print the usage line and
  exit 2, as argparse always does;
* errors the user can cause and fix (the project's own exception classes, wherever they are
  defined, and file-system errors about paths the user named) print ``error: <message>`` to
  stderr, without a traceback, and exit 2;
* anything else is a bug in msae-plugin or a library: Python prints its traceback (exit 1).

``--debug`` (or ``MSAE_DEBUG=1``) shows the traceback of the known errors too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "demo": "msae_plugin.commands.demo",
    "plugins": "msae_plugin.commands.plugins",
    "check": "msae_plugin.commands.check",
    "train": "msae_plugin.commands.train",
    "cache": "msae_plugin.commands.cache",
    "ablate-heads": "msae_plugin.commands.ablate_heads",
    "inversionview": "msae_plugin.commands.inversionview",
    "concepts": "msae_plugin.commands.concepts",
    "convert": "msae_plugin.commands.convert",
    "probes": "msae_plugin.commands.probes",
    "bias": "msae_plugin.commands.bias",
    "search": "msae_plugin.commands.search",
    "dashboard": "msae_plugin.commands.dashboard",
    "remapping": "msae_plugin.commands.remapping",
    "groups": "msae_plugin.commands.groups",
}

#: exit status of a known, user-fixable error (argparse uses 2 for usage errors too)
EXIT_USER_ERROR = 2
#: like other Unix tools killed by SIGPIPE (128 + 13) when the reader of their output goes away
EXIT_BROKEN_PIPE = 141
DEBUG_ENV = "MSAE_DEBUG"

#: file-system errors that, from the command line, almost always concern a path the user typed
_PATH_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msae",
        description="msae-plugin: Matryoshka SAEs and friends inside SAELens.",
        epilog=f"Known errors print 'error: ...' and exit {EXIT_USER_ERROR}; pass --debug or set "
        f"{DEBUG_ENV}=1 to see their traceback.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the full traceback of known errors too (same as {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
        # also accepted after the sub-command (`msae check PATH --debug`); SUPPRESS keeps a
        # `msae --debug check` from being reset to False by the sub-parser's default
        sub.choices[name].add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                       help="show the full traceback of known errors too")
    return parser


def is_known_error(exc: BaseException) -> bool:
    """True for errors a user can fix from the command line.

    Every exception class the project defines (``msae_plugin.errors`` and the few that live next
    to their code, e.g. ``VisionConfigError``) counts, found by the module of any class in the
    exception's MRO, so a class moved between modules or added later is covered without a list
    to keep in sync. Built-in errors raised by project code (``TypeError``...) are bugs and are
    not covered.
    """
    if isinstance(exc, _PATH_ERRORS):
        return True
    return any(
        cls.__module__ == "msae_plugin" or cls.__module__.startswith("msae_plugin.")
        for cls in type(exc).__mro__
    )


def _debug_requested(args: argparse.Namespace | None) -> bool:
    env = os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
    return env or bool(args is not None and getattr(args, "debug", False))


def _message(exc: BaseException) -> str:
    """One readable line: ``str(exc)``, or the class name when the message is empty; an
    ``OSError`` from ``open()`` names the file in ``str`` already."""
    text = str(exc).strip()
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("RANK", "0") != "0":
        # one progress bar per torchrun launch (rank 0's). tqdm reads TQDM_* overrides when it
        # is imported, so this has to happen before any sub-command imports SAELens.
        os.environ.setdefault("TQDM_DISABLE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here, not at exit
        return status
    except BrokenPipeError:
        # `msae ... | head` closed our stdout: not an error of ours, and not worth a traceback.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if not is_known_error(exc) or _debug_requested(args):
            raise
        print(f"error: {_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
