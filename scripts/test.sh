#!/usr/bin/env bash
# Set everything up (first run only; Chromium for the browser tests), lint, and run the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_chromium.sh   # headless browser for the dashboard tests
.venv/bin/ruff check src tests benchmarks
.venv/bin/pytest -q --durations=15 "$@"
