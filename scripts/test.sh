#!/usr/bin/env bash
# Set up (.venv with test extras, system libraries for offscreen Slicer rendering) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
Testing/slicer_module/setup.sh
exec .venv/bin/python -m pytest -q "$@"
