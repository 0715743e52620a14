"""pytest set-up for the Slicer tests under slicer-core: a fresh MRML scene per test.

The module's folder is put on ``sys.path`` as Slicer does for scripted modules.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parents[1]
MODULE_DIR = REPOSITORY / "RecursiveCascadeRegistration"
sys.path.insert(0, str(MODULE_DIR))

# slicer-core's package extends its __path__ with every "<sys.path entry>/slicer" folder
# (pkgutil.extend_path); with Testing/ on sys.path this folder would join the package and its test
# files would be imported as slicer submodules. Hide Testing/ while slicer is first imported.
_savedPath = sys.path[:]
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() / "slicer" != HERE]
try:
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (Testing/slicer/setup.sh)")
finally:
    sys.path[:] = _savedPath


@pytest.fixture
def scene():
    """A fresh MRML scene with the module's logics (mrml_scene.newScene), cleared afterwards."""
    import torch

    from mrml_scene import newScene

    torch.set_num_threads(2)
    mrmlScene = newScene()
    yield mrmlScene
    mrmlScene.Clear(True)
    slicer.mrmlScene = None
