"""Offscreen Slicer slice views under slicer-core: Slicer's slice logic and 2D displayable managers
(transform grid, segmentations) drawn by VTK (EGL/Mesa without a display).

Used by test_slicer_rendering.py and by render_docs_images.py (pictures in docs/images/).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

DISPLAYABLE_MANAGERS = ("vtkMRMLTransformsDisplayableManager2D", "vtkMRMLSegmentationsDisplayableManager2D")


class OffscreenSliceView:
    """A slice view named ``name`` of ``scene`` rendered to an RGB array of ``size`` (width, height)."""

    def __init__(self, scene, applicationLogic, name: str = "Red", orientation: str = "Axial", size=(480, 480)):
        os.environ.pop("DISPLAY", None)  # no X server: VTK falls back to EGL
        self.sliceLogic = slicer.vtkMRMLSliceLogic()
        self.sliceLogic.SetMRMLApplicationLogic(applicationLogic)
        self.sliceLogic.SetMRMLScene(scene)
        self.sliceNode = self.sliceLogic.AddSliceNode(name)
        self.sliceNode.SetOrientation(orientation)
        self.sliceNode.SetDimensions(size[0], size[1], 1)
        self.compositeNode = self.sliceLogic.GetSliceCompositeNode()

        self.renderWindow = vtk.vtkRenderWindow()
        self.renderWindow.SetOffScreenRendering(1)
        self.renderWindow.SetSize(*size)
        self.renderer = vtk.vtkRenderer()
        self.renderWindow.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.renderWindow)
        # The slice logic's output is RGBA 0…255 after window/level; its alpha is not an opacity for
        # the view, so only the colour channels are drawn.
        self._rgb = vtk.vtkImageExtractComponents()
        self._rgb.SetComponents(0, 1, 2)
        mapper = vtk.vtkImageMapper()
        mapper.SetColorWindow(255.0)
        mapper.SetColorLevel(127.5)
        mapper.SetInputConnection(self._rgb.GetOutputPort())
        actor = vtk.vtkActor2D()
        actor.SetMapper(mapper)
        self.renderer.AddViewProp(actor)

        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(applicationLogic)
        for manager in DISPLAYABLE_MANAGERS:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.managers = factory.InstantiateDisplayableManagers(self.renderer)
        self.managers.SetMRMLDisplayableNode(self.sliceNode)
        self._capture = vtk.vtkWindowToImageFilter()
        self._capture.SetInput(self.renderWindow)
        self._capture.ReadFrontBufferOff()

    def showSlice(self, offset: float = 0.0) -> None:
        """Fit the field of view to the visible volumes and move to ``offset`` mm along the slice normal."""
        self.sliceLogic.FitSliceToAll()
        self.sliceLogic.SetSliceOffset(offset)

    def render(self) -> np.ndarray:
        """The view as ``(height, width, 3)`` uint8, row 0 at the bottom (VTK's pixel order)."""
        # The slice logic's output connection changes with the layers shown, so it is taken at each render.
        self._rgb.SetInputConnection(self.sliceLogic.GetImageDataConnection())
        self.managers.RequestRender()
        self.renderWindow.Render()
        self._capture.Modified()
        self._capture.Update()
        image = self._capture.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
        return pixels[..., :3].copy()

    def pixelsToRAS(self) -> np.ndarray:
        """RAS position of every pixel centre, ``(height, width, 3)``."""
        width, height, _ = self.sliceNode.GetDimensions()
        xyToRas = self.sliceNode.GetXYToRAS()
        m = np.array([[xyToRas.GetElement(r, c) for c in range(4)] for r in range(4)])
        y, x = np.mgrid[0:height, 0:width]
        xy = np.stack([x, y, np.zeros_like(x), np.ones_like(x)], axis=-1).astype(float)
        return (xy @ m.T)[..., :3]


def sampleVolume(volumeNode, ras: np.ndarray, array: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-voxel values of ``volumeNode`` (or ``array`` on its grid) at RAS points ``(..., 3)``.

    Returns ``(values, inside)``; values outside the grid are 0.
    """
    rasToIjk = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(rasToIjk)
    m = np.array([[rasToIjk.GetElement(r, c) for c in range(4)] for r in range(4)])
    ijk = np.rint(ras @ m[:3, :3].T + m[:3, 3]).astype(int)
    data = slicer.util.arrayFromVolume(volumeNode) if array is None else array  # (k, j, i)
    shape = np.array(data.shape[::-1])
    inside = np.all((ijk >= 0) & (ijk < shape), axis=-1)
    clipped = np.clip(ijk, 0, shape - 1)
    values = np.where(inside, data[clipped[..., 2], clipped[..., 1], clipped[..., 0]], 0)
    return values, inside


def savePNG(pixels: np.ndarray, path: str | Path) -> Path:
    """Write a ``render()`` array (row 0 at the bottom) as a PNG, written to a temporary name then renamed."""
    from PIL import Image

    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.ascontiguousarray(pixels[::-1])).save(temporary, format="PNG")
    os.replace(temporary, path)
    return path
