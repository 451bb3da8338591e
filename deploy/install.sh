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
# --no-compile: Python compiles what is imported on first use; compiling every module of torch and Ray up
# front took a third of the install (108 s -> 76 s here).
.venv/bin/python -m pip install --quiet --progress-bar off --no-compile -e ".[dev]"
.venv/bin/python -c "import pipeline, actors, torch, ray, av" >/dev/null
