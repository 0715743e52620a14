"""A scene for the logic without the Slicer application (slicer-core: the tests, the web app).

In Slicer the application builds ``slicer.mrmlScene`` and registers the module logics; under slicer-core
nothing does, so :func:`newScene` builds a scene with the logics ``registerVolumes`` needs.
"""
from __future__ import annotations

__all__ = ["newScene"]


def newScene():
    """A fresh scene with colour, volume, transform and segmentation logics.

    The application logic is kept as ``scene.applicationLogic`` and the module logics as
    ``scene.moduleLogics``, so they live as long as the scene.
    """
    import slicer

    scene = slicer.vtkMRMLScene()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    colors = application.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    application.SetModuleLogic("Colors", colors)
    logics = {"Volumes": slicer.vtkSlicerVolumesLogic(), "Transforms": slicer.vtkSlicerTransformLogic(),
              "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic()}
    for name, logic in logics.items():
        logic.SetMRMLApplicationLogic(application)
        logic.SetMRMLScene(scene)
        application.SetModuleLogic(name, logic)
    scene.applicationLogic = application
    scene.moduleLogics = logics
    return scene
