#!/usr/bin/env bash
# Create .venv and install medtune with the tested versions (CPU torch, no CUDA downloads).
# usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, by exact version: an unpinned resolve would pull multi-GB CUDA wheels.
.venv/bin/python -m pip install -q -c constraints.txt torch
.venv/bin/python -m pip install -q -c constraints.txt -e ".${extras:+[$extras]}"
