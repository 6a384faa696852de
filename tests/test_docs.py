"""The documentation is a tested product: its code runs, its links resolve, its commands parse.

* Every ```python block of README.md and docs/**/*.md runs. A page's blocks run in order in one
  namespace (later blocks may use earlier ones), in a fresh interpreter per page, with the
  working directory set to a temporary folder, so what the page writes lands there and the
  plugin's ``.pth`` auto-activation is exercised as a reader meets it (no ``import msae_plugin``
  is added). A block that truly cannot run here (network, GPU) is preceded by
  ``<!-- docs-test: skip (the reason) -->``; the reason is required.
* Every relative link (``[text](target)``, images too) points to a file inside the repository,
  and its ``#anchor`` exists.
* Every ``msae ...`` line of the shell blocks parses with the real ``msae`` argument parser, and
  every ``scripts/``, ``benchmarks/`` or ``configs/`` path they name exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
SKIP_RE = re.compile(r"^<!--\s*docs-test:\s*skip\s*(?:\((?P<reason>.*)\))?\s*-->\s*$")
MARKER_RE = re.compile(r"<!--\s*docs-test:")
FENCE_RE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
LINK_RE = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
PAGE_TIMEOUT = 300  # seconds for one page (import sae_lens alone is ~13 s on a busy 2-core box)


@dataclass(frozen=True)
class Block:
    """A fenced code block of a markdown page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip_reason: str | None  # set when a docs-test skip marker precedes the block

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse_blocks(page: Path) -> list[Block]:
    """Fenced blocks of ``page``, with the skip marker (if any) on the line before each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        prev = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        skip = SKIP_RE.match(prev)
        blocks.append(
            Block(page, i + 1, m["lang"].lower(), "\n".join(body) + "\n",
                  (skip["reason"] or "").strip() if skip else None)
        )
        i = j + 1
    return blocks


def python_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang == "python" for b in parse_blocks(p))]


# --------------------------------------------------------------------------- markers


def test_every_skip_marker_has_a_reason_and_precedes_a_python_block() -> None:
    problems = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        blocks = {b.line: b for b in parse_blocks(page)}
        for n, line in enumerate(lines, 1):
            if not MARKER_RE.search(line):
                continue
            m = SKIP_RE.match(line.strip())
            if m is None or not (m["reason"] or "").strip():
                problems.append(f"{page.relative_to(ROOT)}:{n}: write "
                                "`<!-- docs-test: skip (why it cannot run here) -->`")
                continue
            nxt = next((k for k in range(n + 1, len(lines) + 1) if lines[k - 1].strip()), None)
            if nxt not in blocks or blocks[nxt].lang != "python":
                problems.append(f"{page.relative_to(ROOT)}:{n}: the skip marker must be right "
                                "before a ```python block")
    assert not problems, "\n".join(problems)


def test_skips_are_rare() -> None:
    """Skipping is for blocks that need what no test machine has (network, a GPU)."""
    blocks = [b for p in PAGES for b in parse_blocks(p) if b.lang == "python"]
    skipped = [f"{b.where} ({b.skip_reason})" for b in blocks if b.skip_reason is not None]
    assert len(blocks) >= 10  # the collector really finds the documentation's code
    assert len(skipped) <= max(2, len(blocks) // 8), skipped


# --------------------------------------------------------------------------- running the code

RUNNER = textwrap.dedent(
    """
    import json, sys, traceback
    blocks = json.load(open(sys.argv[1], encoding="utf-8"))
    ns = {"__name__": "__main__"}
    for b in blocks:
        print(f"=== docs block {b['where']}", flush=True)
        try:
            exec(compile(b["code"], b["where"], "exec"), ns)
        except BaseException:
            traceback.print_exc()
            print(f"DOCS-BLOCK-FAILED {b['where']}", flush=True)
            sys.exit(1)
    print("DOCS-PAGE-OK", flush=True)
    """
)


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.slow
@pytest.mark.parametrize("page", python_pages(), ids=_page_id)
def test_python_blocks_run(page: Path, tmp_path: Path) -> None:
    blocks = [b for b in parse_blocks(page) if b.lang == "python" and b.skip_reason is None]
    if not blocks:
        pytest.skip("every python block of this page is marked docs-test: skip (with a reason)")
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps([{"where": b.where, "code": b.code} for b in blocks]))
    work = tmp_path / "cwd"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"MSAE_PLUGIN_DISABLE", "PYTHONPATH"}}
    env["MPLBACKEND"] = "Agg"
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(spec)], cwd=work, env=env, capture_output=True,
        text=True, timeout=PAGE_TIMEOUT,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "DOCS-PAGE-OK" in proc.stdout, out[-6000:]


# --------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    out = {_slug(m[1]) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}
    out |= set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return out


def _outside_code(page: Path, keep_inline: bool = False) -> str:
    """The page text without fenced blocks and (unless ``keep_inline``) inline code spans."""
    lines = page.read_text(encoding="utf-8").splitlines()
    keep, fence = [], None
    for line in lines:
        m = FENCE_RE.match(line)
        if m and (fence is None or line.strip().startswith(fence)):
            fence = None if fence else m["fence"]
            continue
        if fence is None:
            keep.append(line if keep_inline else re.sub(r"`[^`]*`", "", line))
    return "\n".join(keep)


def test_relative_links_point_inside_the_repository() -> None:
    problems = []
    for page in PAGES:
        for m in LINK_RE.finditer(_outside_code(page)):
            target = m["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not dest.is_relative_to(ROOT):
                problems.append(f"{where} leaves the repository; cite the source instead")
            elif not dest.exists():
                problems.append(f"{where} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                problems.append(f"{where}: no heading or <a id> '{anchor}' in {dest.name}")
    assert not problems, "\n".join(problems)


def test_no_plain_text_paths_outside_the_repository() -> None:
    """`../shared/...`-style references in prose are as unreachable for a reader as links."""
    hits = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in PAGES
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"(?<![\w.])\.\./(?:\.\./)*shared/", line)
    ]
    assert not hits, "\n".join(hits)


# --------------------------------------------------------------------------- shell commands

MSAE_LINE_RE = re.compile(r"^(?:\$\s+)?(?:\S*/)?msae\s+(?P<args>.*)$")
REPO_PATH_RE = re.compile(r"(?<![\w/.-])((?:scripts|benchmarks|configs)/[\w./-]+\.(?:py|sh|json|ya?ml))")


def shell_lines() -> list[tuple[str, str]]:
    """(where, line) for each line of the shell-like blocks (bash, sh, console, unlabelled)."""
    out = []
    for page in PAGES:
        for b in parse_blocks(page):
            if b.lang in {"bash", "sh", "shell", "console", ""}:
                for k, line in enumerate(b.code.splitlines(), 1):
                    out.append((f"{b.page.relative_to(ROOT)}:{b.line + k}", line.strip()))
    return out


def inline_commands() -> list[tuple[str, str]]:
    """(where, command) for inline code spans of the prose that show an ``msae`` command."""
    out = []
    for page in PAGES:
        for n, line in enumerate(_outside_code(page, keep_inline=True).splitlines(), 1):
            for span in re.findall(r"`(msae [^`]+)`", line):
                out.append((f"{page.relative_to(ROOT)} (line {n} of the prose)", span))
    return out


def test_msae_commands_in_the_docs_parse() -> None:
    from msae_plugin.cli import build_parser

    parser = build_parser()
    subcommands = {
        name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices
    }
    assert {"train", "check", "plugins", "demo"} <= subcommands
    seen, problems = 0, []
    for where, line in [*shell_lines(), *inline_commands()]:
        m = MSAE_LINE_RE.match(line)
        if not m:
            continue
        args = shlex.split(m["args"], comments=True)
        seen += 1
        if len(args) == 1 and args[0] in subcommands:  # prose naming a command, not a call
            continue
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            if exc.code not in (0, None):
                problems.append(f"{where}: `msae {' '.join(args)}` does not parse")
    assert seen >= 15  # the docs show the commands; the check would be empty otherwise
    assert not problems, "\n".join(problems)


def test_paths_named_in_shell_blocks_exist() -> None:
    missing = [
        f"{where}: {path}"
        for where, line in shell_lines()
        for path in REPO_PATH_RE.findall(line)
        if not (ROOT / path).exists()
    ]
    assert not missing, "\n".join(missing)


ANY_PATH_RE = re.compile(
    r"(?<![\w/.-])((?:scripts|benchmarks|configs|tests|src|docs)/[\w./-]*[\w/])(?P<glob>[*{]?)"
)


def test_repository_paths_named_in_the_docs_exist() -> None:
    """`tests/test_runners.py`, `scripts/train_embedded_clip.py`... anywhere on a page: renamed
    or deleted files must not leave the docs pointing at nothing (``x_*.json`` globs must match)."""
    missing, seen = [], 0
    for page in PAGES:
        for m in ANY_PATH_RE.finditer(page.read_text(encoding="utf-8")):
            path, seen = m[1], seen + 1
            if m["glob"] == "*":
                ok = any(ROOT.glob(path + "*"))
            else:
                ok = m["glob"] == "{" or (ROOT / path).exists() or (page.parent / path).exists()
            if not ok:
                missing.append(f"{page.relative_to(ROOT)}: {path}{m['glob']}")
    assert seen >= 20
    assert not missing, "\n".join(missing)
