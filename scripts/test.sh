#!/usr/bin/env bash
# Set up (.venv with test extras, system libraries for offscreen Slicer rendering) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
if [ -x Testing/slicer/setup.sh ]; then Testing/slicer/setup.sh; fi
exec .venv/bin/python -m pytest -q "$@"
