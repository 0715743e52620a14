"""Synthetic inputs for the module's self-test (in Slicer) and the slicer-core test suite.

A phantom is defined analytically in RAS millimetres (two ellipsoids of different brightness), so the
fixed and moving volumes can be sampled on unrelated grids: oblique directions, anisotropic spacing.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import slicer
import vtk

__all__ = ["obliqueIJKToRAS", "addPhantom", "addPhantomPair", "SinusoidPredictor", "SEGMENT_NAMES", "PAIR_SHIFT"]

SEGMENT_NAMES = ("ball", "ellipsoid")
#: RAS mm by which :func:`addPhantomPair` moves the moving phantom's structures.
PAIR_SHIFT = (2.0, -1.5, 1.0)
# (centre RAS mm, semi-axes mm, intensity) of each structure, in the phantom's own frame.
_STRUCTURES = (((-6.0, 2.0, 0.0), (7.0, 7.0, 7.0), 200.0), ((7.0, -3.0, 2.0), (5.0, 9.0, 6.0), 120.0))


def _rotation(angles: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z by ``angles`` (degrees)."""
    ax, ay, az = np.radians(angles)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def obliqueIJKToRAS(shape: Sequence[int], spacing: Sequence[float], angles: Sequence[float]) -> np.ndarray:
    """4×4 IJK→RAS matrix of a grid of ``shape`` (i, j, k) whose centre is the RAS origin."""
    matrix = np.eye(4)
    matrix[:3, :3] = _rotation(angles) @ np.diag(spacing)
    matrix[:3, 3] = -matrix[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return matrix


def addPhantom(scene, name: str, shape: Sequence[int], ijkToRAS: np.ndarray, shift: Sequence[float] = (0, 0, 0),
               displacement: Optional[Callable[[np.ndarray], np.ndarray]] = None):
    """Add a phantom volume and its segmentation (segments :data:`SEGMENT_NAMES`) sampled on a grid.

    ``shift`` (RAS mm) moves the phantom's structures; ``displacement`` (``(N, 3)`` RAS points → RAS mm)
    deforms them too: the volume at q shows the phantom at ``q − shift − displacement(q)``.
    Returns ``(volumeNode, segmentationNode)``.
    """
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape[::-1]), indexing="ij")
    ijk = np.stack([i, j, k, np.ones_like(i)], axis=-1).reshape(-1, 4).astype(float)
    ras = (ijk @ ijkToRAS.T)[:, :3]
    ras = ras - np.asarray(shift, dtype=float) - (displacement(ras) if displacement is not None else 0.0)
    intensity = np.full(len(ras), 20.0)
    labels = np.zeros(len(ras), dtype=np.uint8)
    for value, (centre, axes, brightness) in enumerate(_STRUCTURES, start=1):
        inside = (((ras - centre) / axes) ** 2).sum(axis=1) <= 1.0
        intensity[inside] = brightness
        labels[inside] = value
    grid = tuple(shape[::-1])
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(volume, intensity.reshape(grid).astype(np.float32))
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, ijkToRAS[r, c])
    volume.SetIJKToRASMatrix(matrix)
    volume.CreateDefaultDisplayNodes()

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} labels")
    slicer.util.updateVolumeFromArray(labelmap, labels.reshape(grid))
    labelmap.SetIJKToRASMatrix(matrix)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    ids = vtk.vtkStringArray()
    for segmentName, colour in zip(SEGMENT_NAMES, ((0.9, 0.3, 0.2), (0.2, 0.6, 0.9))):
        ids.InsertNextValue(segmentation.GetSegmentation().AddEmptySegment("", segmentName, colour))
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation, ids):
        raise RuntimeError(f"cannot build the phantom segmentation {name}")
    scene.RemoveNode(labelmap)
    return volume, segmentation


def addPhantomPair(scene, displacement: Optional[Callable[[np.ndarray], np.ndarray]] = None):
    """Fixed and moving phantoms on unrelated oblique, anisotropic grids, the moving one shifted by
    :data:`PAIR_SHIFT` (and deformed by ``displacement``, see :func:`addPhantom`).

    Returns ``(fixedVolume, fixedSegmentation, movingVolume, movingSegmentation)``.
    """
    shapeF, shapeM = (28, 24, 20), (26, 30, 18)
    fixed, fixedSeg = addPhantom(scene, "fixed", shapeF, obliqueIJKToRAS(shapeF, (1.2, 1.0, 1.6), (15, -10, 25)))
    moving, movingSeg = addPhantom(scene, "moving", shapeM, obliqueIJKToRAS(shapeM, (1.4, 0.9, 1.8), (-10, 20, 5)),
                                   shift=PAIR_SHIFT, displacement=displacement)
    return fixed, fixedSeg, moving, movingSeg


class SinusoidPredictor:
    """Analytic stand-in for a network: ``flow_c(x) = amplitude · sin(2π x_{c+1} / n_{c+1})`` voxels.

    Smooth and fold-free for ``amplitude`` below ``n / (2π)``; ``card`` sets a small network grid.
    """

    def __init__(self, amplitude: float = 1.5, gridShape: Sequence[int] = (24, 24, 24)):
        self.amplitude = amplitude
        self.card = {"name": "sinusoid", "grid": {"shape": list(gridShape)},
                     "normalization": {"type": "percentile", "low": 1, "high": 99}}
        self.__name__ = "sinusoid"

    def __call__(self, fixed, moving):
        import torch

        shape = fixed.shape[2:]
        axes = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
        flow = [self.amplitude * torch.sin(2 * np.pi * axes[(c + 1) % 3] / shape[(c + 1) % 3]) for c in range(3)]
        return torch.stack(flow).unsqueeze(0).to(fixed.device)
