#!/usr/bin/env bash
# Create .venv/ at the repository root and install rcreg into it (editable).
#   scripts/setup.sh          engine + CLI
#   scripts/setup.sh --test   also the test/benchmark extras (antspyx, itk-elastix, slicer-core, tensorboard, matplotlib)
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0, the CPU build on our machines).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned, so no other requirement can pull a (multi-GB) CUDA build.
.venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e ".${extras}"
echo "rcreg installed in $(pwd)/.venv" >&2
