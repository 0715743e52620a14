"""Finding the ``rcreg`` engine and installing what it needs inside Slicer.

The installed extension carries ``rcreg`` beside this package (the extension's CMake copies
``Engine/rcreg`` into the scripted-modules folder, which Slicer puts on ``sys.path``); a source checkout
added to Slicer's module paths finds it in ``<repository>/Engine``. PyTorch comes from the SlicerPyTorch
extension's ``PyTorchUtils`` (it picks the CPU or CUDA build); other missing packages from pip. The
packages and versions are listed once, in ``Resources/requirements.txt``.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Callable

__all__ = ["addEngineToPath", "bundledModelNames", "missingPackages", "installMissingPackages", "importEngine",
           "REQUIREMENTS_FILE", "requirements"]

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"


def requirements() -> dict[str, str]:
    """Import name → pip requirement line of every package in :data:`REQUIREMENTS_FILE` (torch first)."""
    lines = [line.split("#")[0].strip() for line in REQUIREMENTS_FILE.read_text(encoding="utf-8").splitlines()]
    return {re.match(r"[A-Za-z0-9_.-]+", line).group(0): line for line in lines if line}


def addEngineToPath() -> None:
    """Make ``import rcreg`` work from a source checkout (a no-op when it is importable already)."""
    if importlib.util.find_spec("rcreg") is None:
        checkout = Path(__file__).resolve().parents[2] / "Engine"
        if (checkout / "rcreg" / "__init__.py").is_file():
            sys.path.insert(0, str(checkout))


def bundledModelNames() -> list[str]:
    """Names of the models installed with the engine (``rcreg/models/*.pt``), found without importing torch."""
    addEngineToPath()
    spec = importlib.util.find_spec("rcreg")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(path.stem for folder in spec.submodule_search_locations for path in Path(folder, "models").glob("*.pt"))


def missingPackages() -> list[str]:
    """Import names of the engine's dependencies that are not installed (``torch`` first)."""
    return [name for name in requirements() if importlib.util.find_spec(name) is None]


def installMissingPackages(confirm: Callable[[str], bool]) -> bool:
    """Install the missing dependencies after ``confirm(message)`` agrees; return whether all are there.

    torch is installed through SlicerPyTorch's ``PyTorchUtils`` (the "PyTorch" extension this one
    depends on), the rest with ``slicer.util.pip_install``.
    """
    missing = missingPackages()
    if not missing:
        return True
    if not confirm(f"Registration needs these Python packages: {', '.join(missing)}. "
                   "Download and install them now (this can take several minutes)?"):
        return False
    import slicer

    required = requirements()
    if "torch" in missing:
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("the PyTorch extension is not installed: install it from the Extensions Manager") from None
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                         torchVersionRequirement=required["torch"][len("torch"):]) is None:
            return False
    for name in missing:
        if name != "torch":
            slicer.util.pip_install(required[name])
    importlib.invalidate_caches()
    return not missingPackages()


def importEngine():
    """Import and return ``rcreg``; a one-line error says what is missing."""
    addEngineToPath()
    missing = missingPackages()
    if missing:
        raise RuntimeError(f"missing Python packages {', '.join(missing)}: press Apply in the "
                           "RecursiveCascadeRegistration module to install them")
    if importlib.util.find_spec("rcreg") is None:
        raise RuntimeError("the rcreg engine is not installed with this module")
    return importlib.import_module("rcreg")
