#!/usr/bin/env bash
# Set up (.venv with the test and web extras, system libraries for offscreen Slicer rendering, Debian's chromium
# for the browser tests) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
Testing/slicer_module/setup.sh
Testing/web/setup.sh
exec .venv/bin/python -m pytest -q "$@"
