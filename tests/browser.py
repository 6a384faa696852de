"""Headless Chromium for the dashboard tests: render a page, return its DOM and console errors.

Why a real browser: the dashboard is JavaScript that builds the page from data scripts; only
running it shows whether it renders, filters and sorts correctly and throws nothing. The harness
uses plain command-line Chromium (``--dump-dom``, ``--screenshot``), no driver package.

Console messages come from ``--enable-logging=stderr``: Chromium prints each one as a
``CONSOLE`` line. This Chromium logs every level (log, warn, error, uncaught exceptions) at the
same ``INFO`` level, so the level cannot be told apart; the dashboard writes nothing to the
console, hence every console message counts as an error here.

Quirk: a ``--screenshot`` of a page that scrolled itself (e.g. ``#latent=`` scrolls to the card)
comes out blank in this headless Chromium; screenshot states that do not jump.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: a console line, e.g. ``[1:1:1130/063403.103:INFO:CONSOLE:1] "msg", source: file:///a.js (1)``
#: (older builds print ``CONSOLE(1)``)
CONSOLE_RE = re.compile(r':CONSOLE[:(][^\]]*\] "(?P<msg>.*)", source: (?P<src>.*?) \((?P<line>\d+)\)')


class BrowserUnavailable(RuntimeError):
    """No Chromium on PATH and none could be installed."""


@dataclass
class BrowserResult:
    """What one headless render produced."""

    dom: str
    console_errors: list[str] = field(default_factory=list)
    stderr: str = ""


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> str:
    """A Chromium path; installs Debian's ``chromium`` with apt-get when root and it is missing.

    The browser tests must run in the normal suite, never skip: a missing browser is either
    installed here or reported as a failure that says how to install it.
    """
    found = find_chromium()
    if found:
        return found
    apt = shutil.which("apt-get")
    if os.geteuid() == 0 and apt:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = [apt, "install", "-y", "chromium"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run([apt, "update"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
        found = find_chromium()
        if found:
            return found
    raise BrowserUnavailable(
        "the dashboard tests need a headless Chromium and none is on PATH "
        f"(looked for {', '.join(CANDIDATES)}). Install it with "
        "`sudo bash scripts/install_chromium.sh` (Debian/Ubuntu: `sudo apt-get install -y chromium`)"
    )


def _base_args(profile: str, window: tuple[int, int], budget_ms: int) -> list[str]:
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}",
        f"--window-size={window[0]},{window[1]}", f"--virtual-time-budget={budget_ms}",
    ]


def console_errors(stderr: str) -> list[str]:
    """Every console message in Chromium's stderr log, as ``message (source:line)``."""
    return [
        f"{m['msg']} ({m['src']}:{m['line']})" for m in CONSOLE_RE.finditer(stderr)
    ]


def render(
    url: str,
    *,
    screenshot: Path | None = None,
    window: tuple[int, int] = (1280, 1600),
    budget_ms: int = 8000,
) -> BrowserResult:
    """Load ``url`` in headless Chromium and return the DOM after scripts ran.

    ``--virtual-time-budget`` lets timers and on-demand script loads finish before the DOM is
    dumped, without waiting in real time. With ``screenshot``, a second run saves a PNG there.
    """
    exe = ensure_chromium()
    timeout = budget_ms / 1000 + 60
    with tempfile.TemporaryDirectory(prefix="msae-chromium-") as profile:
        args = [exe, *_base_args(profile, window, budget_ms),
                "--enable-logging=stderr", "--v=0", "--dump-dom", url]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 and not proc.stdout:
            raise RuntimeError(
                f"chromium exited with {proc.returncode} rendering {url}:\n{proc.stderr[-3000:]}"
            )
        result = BrowserResult(proc.stdout, console_errors(proc.stderr), proc.stderr)
        if screenshot is not None:
            screenshot = Path(screenshot)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            shot = subprocess.run(
                [exe, *_base_args(profile, window, budget_ms),
                 f"--screenshot={screenshot}", url],
                capture_output=True, text=True, timeout=timeout,
            )
            if not screenshot.is_file():
                raise RuntimeError(
                    f"chromium wrote no screenshot of {url} (exit {shot.returncode}):\n"
                    f"{shot.stderr[-3000:]}"
                )
    return result
