"""Finding the ``rcreg`` engine and installing what it needs inside Slicer.

The installed extension carries ``rcreg`` beside this package (the extension's CMake copies
``Engine/rcreg`` into the scripted-modules folder, which Slicer puts on ``sys.path``); a source checkout
added to Slicer's module paths finds it in ``<repository>/Engine``. PyTorch comes from the SlicerPyTorch
extension's ``PyTorchUtils`` (it picks the CPU or CUDA build); other missing packages from pip.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

__all__ = ["addEngineToPath", "bundledModelNames", "missingPackages", "installMissingPackages", "importEngine",
           "TORCH_REQUIREMENT"]

TORCH_REQUIREMENT = ">=2.1"
# Import name → pip requirement for what rcreg needs beyond Slicer's own Python (numpy, SimpleITK) and torch.
PIP_REQUIREMENTS = {"scipy": "scipy"}


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
    return [name for name in ("torch", *PIP_REQUIREMENTS) if importlib.util.find_spec(name) is None]


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

    if "torch" in missing:
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("the PyTorch extension is not installed: install it from the Extensions Manager") from None
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                         torchVersionRequirement=TORCH_REQUIREMENT) is None:
            return False
    for name in missing:
        if name != "torch":
            slicer.util.pip_install(PIP_REQUIREMENTS[name])
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
