"""The Slicer module's GUI-free logic, ``RecursiveCascadeRegistrationLib``: the one place the web app imports it.

The web app calls the same ``registerVolumes``, node conversions, display settings and metrics table as the
Slicer panel. In a source checkout the module folder ``<repository>/RecursiveCascadeRegistration`` (beside
``Engine/``) holds the package; it is put on ``sys.path`` here, as Slicer does for scripted modules.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["MODULE_DIR", "SUBMODULES", "import_lib"]

#: The Slicer module's folder in a source checkout (what Slicer's "Additional module paths" names).
MODULE_DIR = Path(__file__).resolve().parents[3] / "RecursiveCascadeRegistration"
#: The package's modules the web app uses, imported with it so they are its attributes.
SUBMODULES = ("choices", "display", "engine", "headless", "logic", "nodes")


def import_lib() -> ModuleType:
    """Import and return ``RecursiveCascadeRegistrationLib`` with :data:`SUBMODULES` (it imports slicer-core);
    a one-line error if it is absent."""
    if importlib.util.find_spec("RecursiveCascadeRegistrationLib") is None:
        if not (MODULE_DIR / "RecursiveCascadeRegistrationLib" / "__init__.py").is_file():
            raise RuntimeError(f"the Slicer module's logic is not at {MODULE_DIR}: rcreg web runs from a source "
                               "checkout (pip install -e '.[web]')")
        sys.path.insert(0, str(MODULE_DIR))
    for name in SUBMODULES:
        importlib.import_module(f"RecursiveCascadeRegistrationLib.{name}")
    return importlib.import_module("RecursiveCascadeRegistrationLib")
