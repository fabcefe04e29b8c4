#!/usr/bin/env bash
# Set up from nothing and run the test suite. torch is pinned first so pip takes the CPU build
# and never pulls several GB of CUDA wheels; everything else comes from pyproject.toml.
# Debian's chromium and chromium-driver (for the report's browser test) are installed when this
# runs as root with apt-get; elsewhere that test installs nothing and skips with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromedriver >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
    >/dev/null 2>&1 || echo "test.sh: could not install chromium; the browser test will skip" >&2
fi
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
python -m pytest -q --durations=15 "$@"
# The whole suite again under TransformerLens 4, which a user gets by choosing it (README,
# "Install"): a second environment shares every package above and replaces transformer-lens only.
# Tests of HookedTransformer itself and of SAELens (which pins TransformerLens 3) skip there and
# say why. Skipped when pytest got arguments (a chosen subset).
if [ "$#" -eq 0 ]; then
  python -m venv --system-site-packages .tl4-env
  .tl4-env/bin/python -m pip install -q "transformer-lens==4.3.0"
  .tl4-env/bin/python -m pytest -q -p no:cacheprovider --durations=5
fi
