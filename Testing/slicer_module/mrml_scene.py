"""A Slicer MRML scene with the logics the module uses, under slicer-core (no Qt, no application)."""
from __future__ import annotations

import slicer


def newScene():
    """A fresh scene set as ``slicer.mrmlScene``, with colour, volume, transform and segmentation logics.

    The application logic is kept as ``scene.applicationLogic`` (and the module logics as
    ``scene.moduleLogics``) so that they live as long as the scene.
    """
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = app.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    app.SetModuleLogic("Colors", colors)
    logics = {"Volumes": slicer.vtkSlicerVolumesLogic(), "Transforms": slicer.vtkSlicerTransformLogic(),
              "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic()}
    for name, logic in logics.items():
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
    scene.applicationLogic = app
    scene.moduleLogics = logics
    return scene
