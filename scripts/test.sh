#!/usr/bin/env bash
# Set everything up (first run only; Chromium for the browser tests), lint, and run the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_chromium.sh   # headless browser for the dashboard tests
.venv/bin/ruff check src tests benchmarks
# two workers (pytest-xdist), each test file on one worker so its module fixtures are built once:
# see docs/benchmarks.md, "Where time goes: the demo and the test suite"
.venv/bin/pytest -q -n 2 --dist loadfile --durations=15 "$@"
