"""A Slicer MRML scene with the logics the module uses, under slicer-core (no Qt, no application).

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
    """A fresh scene registered as ``slicer.mrmlScene``, with colour, volume, transform and segmentation logics."""
    import torch

    torch.set_num_threads(2)
    mrmlScene = slicer.vtkMRMLScene()
    slicer.mrmlScene = mrmlScene
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(mrmlScene)
    colors = app.GetColorLogic()
    colors.SetMRMLScene(mrmlScene)
    colors.AddDefaultColorNodes()
    app.SetModuleLogic("Colors", colors)
    logics = {"Volumes": slicer.vtkSlicerVolumesLogic(), "Transforms": slicer.vtkSlicerTransformLogic(),
              "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic()}
    for name, logic in logics.items():
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(mrmlScene)
        app.SetModuleLogic(name, logic)
    mrmlScene.applicationLogic = app  # keep the logics alive as long as the scene
    mrmlScene.moduleLogics = logics
    yield mrmlScene
    mrmlScene.Clear(True)
    slicer.mrmlScene = None
