#!/usr/bin/env bash
# Make sure a headless Chromium is available for the dashboard browser tests (idempotent).
# Exits 0 at once when chromium (or chromium-browser / google-chrome) is on PATH; otherwise
# installs Debian's `chromium` package with apt-get (needs root), running `apt-get update` first
# only when the plain install fails (stale package lists).
set -euo pipefail

for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$name" >/dev/null 2>&1; then
        echo "install_chromium: found $(command -v "$name"); nothing to do"
        exit 0
    fi
done

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: no chromium on PATH and no apt-get here; install Chromium or" \
         "Google Chrome with your system's package manager" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_chromium: no chromium on PATH; run as root: sudo bash scripts/install_chromium.sh" \
         "(or: sudo apt-get install -y chromium)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install_chromium: apt-get install -y chromium"
if ! apt-get install -y chromium; then
    echo "install_chromium: install failed; running apt-get update and retrying"
    apt-get update
    apt-get install -y chromium
fi
command -v chromium >/dev/null 2>&1 || { echo "install_chromium: chromium still missing" >&2; exit 1; }
echo "install_chromium: installed $(command -v chromium) ($(chromium --version 2>/dev/null || true))"
