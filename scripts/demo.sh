#!/usr/bin/env bash
# Set everything up (first run only) and run the main job: the MSAE demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/msae demo "$@"
