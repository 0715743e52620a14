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

import slicer  # slicer-core (scripts/test.sh installs it); a missing install fails, never skips


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
