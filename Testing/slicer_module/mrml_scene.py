"""A Slicer MRML scene with the logics the module uses, under slicer-core (no Qt, no application)."""
from __future__ import annotations

import slicer
from RecursiveCascadeRegistrationLib.headless import newScene as _newScene


def newScene():
    """A fresh scene (RecursiveCascadeRegistrationLib.headless.newScene) set as ``slicer.mrmlScene``."""
    scene = _newScene()
    slicer.mrmlScene = scene
    return scene
