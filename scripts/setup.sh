#!/usr/bin/env bash
# Create .venv (if missing) and install msae-plugin with its test extras.
# torch/torchvision are pinned first so nothing can pull a different (multi-GB) build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
if ! .venv/bin/python -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
fi
if ! .venv/bin/python -c "import msae_plugin, pytest, xdist, ruff, hypothesis, yaml, hatchling" 2>/dev/null; then
  .venv/bin/pip install -q -e ".[test]"
fi
