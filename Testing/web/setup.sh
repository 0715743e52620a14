#!/usr/bin/env bash
# Prepare a fresh machine for the browser tests (Testing/web/):
#  - Debian's chromium, which Playwright drives headless (never `playwright install`: no browser download);
#  - the web extra in .venv (trame-slicer and the one slicer-core of pyproject.toml), when any of its
#    requirements is missing or at another version.
# Idempotent; called by scripts/test.sh after scripts/setup.sh --test (Playwright, psutil) and
# Testing/slicer_module/setup.sh (EGL/Mesa libraries). Needs root (or sudo) only when chromium is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
# Exit status 0 when every requirement of pyproject.toml's web extra is installed at a matching version.
if ! .venv/bin/python - <<'PYTHON'
import importlib.metadata as metadata
import re
import sys

from packaging.requirements import Requirement

extra = re.search(r'^web = \[(.*)\]$', open("pyproject.toml", encoding="utf-8").read(), re.MULTILINE).group(1)
for requirement in map(Requirement, re.findall(r'"([^"]+)"', extra)):
    try:
        if metadata.version(requirement.name) not in requirement.specifier:
            sys.exit(1)
    except metadata.PackageNotFoundError:
        sys.exit(1)
PYTHON
then
  .venv/bin/python -m pip install --quiet -e ".[web]"
fi
