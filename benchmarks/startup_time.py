"""What does msae-plugin's ``.pth`` autoload hook add to every Python start-up?

Two measurements in one run:

1. Direct A/B of ``python -c pass``: A with the installed ``msae_plugin_autoload.pth``, B with it
   temporarily renamed away (``*.pth.benchmark-disabled``, which ``site`` ignores). A and B runs
   are interleaved in random order per pair, after a few discarded warm-up runs, so drifting
   machine load hits both alike. The file is renamed only for the duration of each B run and is
   always put back: ``try/finally`` plus SIGTERM/SIGHUP handlers cover Ctrl-C and ``kill``; a
   backup left behind by a ``kill -9`` is restored at the next start.
2. ``python -X importtime -c pass``: the import time of the hook's own subtree (everything that
   ``msae_plugin._autoload`` pulled in), and which non-msae modules it drags into start-up.

Exit status: 0 if the median added start-up is within ``--max-ms`` (default 20 ms), 1 if not,
2 if the hook's ``.pth`` cannot be found.

Note: during each B run (a few tens of ms) other interpreters starting from the same venv also
start without the hook. Do not run this while someone else's tests use the venv.

Usage::

    .venv/bin/python benchmarks/startup_time.py [--reps 40] [--max-ms 20] [--python PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

PTH_NAME = "msae_plugin_autoload.pth"
BACKUP_SUFFIX = ".benchmark-disabled"
HOOK_MODULE = "msae_plugin._autoload"


class _Interrupted(KeyboardInterrupt):
    """Raised from the SIGTERM/SIGHUP handler so that every ``finally`` runs."""


def _on_signal(signum, _frame):
    raise _Interrupted(f"signal {signum}")


def find_pth(python: str) -> Path | None:
    code = (
        "import json, site; "
        "print(json.dumps(site.getsitepackages() + [site.getusersitepackages()]))"
    )
    dirs = json.loads(subprocess.check_output([python, "-c", code], text=True))
    for d in dirs:
        p = Path(d) / PTH_NAME
        if p.exists() or p.with_name(PTH_NAME + BACKUP_SUFFIX).exists():
            return p
    return None


class PthSwitch:
    """Renames the hook's ``.pth`` away and back; idempotent, crash-safe restore."""

    def __init__(self, pth: Path) -> None:
        self.pth = pth
        self.backup = pth.with_name(pth.name + BACKUP_SUFFIX)

    def restore(self) -> bool:
        """Put the ``.pth`` back if it is away. Returns True if something was restored."""
        if self.backup.exists() and not self.pth.exists():
            os.replace(self.backup, self.pth)
            return True
        return False

    def run_without(self, fn):
        os.replace(self.pth, self.backup)
        try:
            return fn()
        finally:
            os.replace(self.backup, self.pth)


def time_once(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - t0) * 1e3


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


_IMPORTTIME = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s+)(\S+)\s*$")


def hook_import_subtree(stderr: str) -> tuple[float, list[str]]:
    """Cumulative ms of the hook's import and the non-msae modules imported beneath it."""
    rows = []
    for line in stderr.splitlines():
        m = _IMPORTTIME.match(line)
        if m:
            rows.append((int(m.group(2)), len(m.group(3)), m.group(4)))
    # importtime prints children before their parent; the parent has the smaller indent
    for i, (cum, indent, name) in enumerate(rows):
        if name == HOOK_MODULE:
            children = []
            j = i - 1
            while j >= 0 and rows[j][1] > indent:
                children.append(rows[j][2])
                j -= 1
            extra = sorted(n for n in children if not n.startswith("msae_plugin"))
            return cum / 1e3, extra
    return 0.0, []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=40, help="timed runs per variant (default 40)")
    ap.add_argument("--warmup", type=int, default=3, help="discarded runs per variant")
    ap.add_argument("--importtime-reps", type=int, default=10)
    ap.add_argument("--max-ms", type=float, default=20.0, help="fail above this median cost")
    ap.add_argument("--python", default=sys.executable, help="interpreter to measure")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    print(
        f"machine: {platform.platform()} | {platform.machine()} | cpus={os.cpu_count()} | "
        f"load avg={' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"python:  {platform.python_implementation()} {platform.python_version()} ({args.python})"
    )

    pth = find_pth(args.python)
    if pth is None:
        print(f"error: {PTH_NAME} not found in the site-packages of {args.python}", file=sys.stderr)
        return 2
    switch = PthSwitch(pth)
    if switch.restore():
        print(f"note: restored {pth.name} left renamed by an interrupted earlier run")
    print(f"hook:    {pth}")

    env = {k: v for k, v in os.environ.items() if k not in {"MSAE_PLUGIN_DISABLE", "PYTHONPATH"}}
    cmd = [args.python, "-c", "pass"]
    probe = [args.python, "-c", f"import sys; print({HOOK_MODULE!r} in sys.modules)"]
    rng = random.Random(args.seed)
    with_hook: list[float] = []
    without_hook: list[float] = []

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        # sanity: the A/B switch really switches the hook
        on = subprocess.check_output(probe, env=env, text=True).strip()
        off = switch.run_without(lambda: subprocess.check_output(probe, env=env, text=True))
        if (on, off.strip()) != ("True", "False"):
            print(f"error: hook probe gave with={on!r} without={off.strip()!r}", file=sys.stderr)
            return 2

        for _ in range(args.warmup):
            time_once(cmd, env)
            switch.run_without(lambda: time_once(cmd, env))
        for _ in range(args.reps):
            order = [True, False]
            rng.shuffle(order)
            for active in order:
                if active:
                    with_hook.append(time_once(cmd, env))
                else:
                    without_hook.append(switch.run_without(lambda: time_once(cmd, env)))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        switch.restore()
        for s, h in old.items():
            signal.signal(s, h)
        if not pth.exists():  # pragma: no cover - should be impossible
            print(f"WARNING: {pth} is missing; rename {switch.backup} back!", file=sys.stderr)

    # importtime: the hook's own import subtree (no renaming needed)
    subtree: list[float] = []
    extra: list[str] = []
    for _ in range(args.importtime_reps):
        proc = subprocess.run(
            [args.python, "-X", "importtime", "-c", "pass"], env=env, capture_output=True, text=True
        )
        ms, extra = hook_import_subtree(proc.stderr)
        subtree.append(ms)

    med_on, med_off = statistics.median(with_hook), statistics.median(without_hook)
    paired = [a - b for a, b in zip(with_hook, without_hook, strict=True)]
    added = med_on - med_off
    print(f"\n`python -c pass`, {args.reps} interleaved runs each (ms):")
    print(f"  {'':14}{'median':>8}{'p90':>8}{'min':>8}")
    for label, xs in (("with hook", with_hook), ("without hook", without_hook)):
        print(f"  {label:14}{statistics.median(xs):8.2f}{pct(xs, 90):8.2f}{min(xs):8.2f}")
    print(f"  added by hook: {added:+.2f} ms (difference of medians)")
    print(f"                 {statistics.median(paired):+.2f} ms (median of paired differences)")
    print(
        f"\n-X importtime, {args.importtime_reps} runs: {HOOK_MODULE} subtree median "
        f"{statistics.median(subtree):.2f} ms (importtime inflates; compare the A/B above)"
    )
    print(f"  non-msae modules the hook imports at start-up: {', '.join(extra) or 'none'}")

    if added > args.max_ms:
        print(f"\nFAIL: median added start-up {added:.2f} ms > {args.max_ms:.1f} ms")
        return 1
    print(f"\nOK: median added start-up {added:.2f} ms <= {args.max_ms:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
