"""Plot the addition decoder's training curve across continued runs.

Usage::

    .venv/bin/python scripts/plot_decoder_training.py OUT.png LOG1 [LOG2 ...]

Each LOG is an ``eval_log.json`` written by ``scripts/train_addition_decoder.py``; later runs
continued from an earlier decoder with ``--init-from``. Entries are placed at their cumulative
step (``total_steps`` when recorded, else the step plus the end of the previous log), and each
continuation starts a new segment (a fresh optimiser and schedule), marked by a dotted line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from addition_case_study import plot_training  # noqa: E402


def combine(logs: list[list[dict]]) -> tuple[list[dict], list[int]]:
    """One log at cumulative steps, and the step where each continuation began."""
    out, starts, offset = [], [], 0
    for i, log in enumerate(logs):
        if i:
            starts.append(offset)
        for e in log:
            total = e.get("total_steps", offset + e["step"])
            out.append({**e, "step": total})
        offset = out[-1]["step"]
    return out, starts


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print(__doc__)
        return 2
    out = Path(args[0])
    log, starts = combine([json.loads(Path(p).read_text()) for p in args[1:]])
    plot_training(log, out, continuations=starts)
    best = max(log, key=lambda e: e["mean_ratio"])
    print(f"{out}: {len(log)} points; best mean {best['mean_ratio']:.3f} at step {best['step']}; "
          f"last {log[-1]['mean_ratio']:.3f} at step {log[-1]['step']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
