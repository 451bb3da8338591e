#!/usr/bin/env bash
# Create ./.venv (if missing) and install sanstream with its test tools. Safe to re-run: pip skips what is
# already installed. torch/torchvision are pinned in pyproject.toml to the pair that matches CUDA wheels on
# Linux x86_64, so a GPU machine gets CUDA and a machine with a local wheel cache downloads nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --progress-bar off -e ".[dev]"
.venv/bin/python -c "import pipeline, actors, torch, ray, av" >/dev/null
