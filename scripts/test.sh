#!/usr/bin/env bash
# Set up from nothing and run the test suite. torch is pinned first so pip takes the CPU build
# and never pulls several GB of CUDA wheels; everything else comes from pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
python -m pytest -q "$@"
