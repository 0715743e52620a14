#!/usr/bin/env bash
# Set up .venv/ and run the main job: fetch the sample brain pair (Colin27 → MNI152 2009a) and register it
# with the bundled brain model; results (warped image and labels, ITK transform and its inverse, metrics, figure)
# go to output/demo/ unless another folder is given: scripts/demo.sh --output-dir DIR
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/rcreg demo "$@"
