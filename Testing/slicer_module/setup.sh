#!/usr/bin/env bash
# Prepare a fresh machine for the Slicer tests (Testing/slicer_module/) and the docs pictures:
#  - Debian libraries for offscreen OpenGL through EGL/Mesa (slice views render without an X server);
#  - slicer-core in .venv at pyproject.toml's pinned version (Slicer's MRML scene, nodes and logics without
#    Qt). Never the unrelated PyPI package "slicer", which would overwrite slicer-core's "slicer" package.
# Idempotent; called by scripts/test.sh. Needs root (or sudo) only when the libraries are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
packages=(libegl1 libegl-mesa0 libgl1-mesa-dri)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# The project's one slicer-core version, as pyproject.toml pins it (the version trame-slicer accepts).
spec=$(grep -o 'slicer-core==[0-9.]*' pyproject.toml | head -n 1)
if ! .venv/bin/python -c "import importlib.metadata as m, sys, slicer; slicer.vtkMRMLScene; \
sys.exit(m.version('slicer-core') != sys.argv[1])" "${spec#slicer-core==}" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "$spec"
fi
