"""Conversions between Slicer MRML nodes and SimpleITK images (no Qt; runs under slicer-core too).

Slicer nodes live in RAS, SimpleITK images in LPS; geometry and vectors are flipped with
``diag(-1, -1, 1)`` as described in docs/conventions.md (Physical space). Arrays from
``slicer.util.arrayFromVolume`` and ``sitk.GetArrayFromImage`` share the (k, j, i) order.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

__all__ = [
    "RAS_FROM_LPS",
    "worldIJKToRAS",
    "volumeNodeToImage",
    "updateVolumeNodeFromImage",
    "gridTransformFromDisplacement",
    "displacementFromGridTransform",
    "segmentationToLabelImage",
    "updateSegmentationFromLabelImage",
    "removedOnExit",
    "removeNodesAddedSince",
    "nodeIds",
]

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


def _matrixToArray(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _arrayToMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def worldIJKToRAS(volumeNode) -> np.ndarray:
    """The node's IJK→RAS matrix (4×4) in world coordinates, including linear parent transforms.

    Raises ValueError if the node sits under a non-linear transform (harden it first).
    """
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    matrix = _matrixToArray(ijkToRas)
    parent = volumeNode.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise ValueError(f"volume '{volumeNode.GetName()}' is under the non-linear transform "
                             f"'{parent.GetName()}': harden it first")
        toWorld = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(toWorld)
        matrix = _matrixToArray(toWorld) @ matrix
    return matrix


def volumeNodeToImage(volumeNode, pixelType: int | None = None) -> sitk.Image:
    """A scalar or labelmap volume node as a SimpleITK image in LPS (voxels copied).

    ``pixelType`` (a ``sitk.sitkXXX`` constant) casts the result; by default the node's type is kept.
    """
    if volumeNode is None or volumeNode.GetImageData() is None:
        name = volumeNode.GetName() if volumeNode is not None else "None"
        raise ValueError(f"volume '{name}' has no image data")
    if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(f"volume '{volumeNode.GetName()}' is not a scalar volume")
    matrix = worldIJKToRAS(volumeNode)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.array(slicer.util.arrayFromVolume(volumeNode)))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((RAS_FROM_LPS @ matrix[:3, 3]).tolist())
    image.SetDirection((RAS_FROM_LPS @ (matrix[:3, :3] / spacing)).ravel().tolist())
    return sitk.Cast(image, pixelType) if pixelType is not None else image


def _ijkToRasFromImage(image: sitk.Image) -> np.ndarray:
    """IJK→RAS 4×4 matrix of an LPS SimpleITK image."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = RAS_FROM_LPS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = RAS_FROM_LPS @ np.array(image.GetOrigin())
    return matrix


def updateVolumeNodeFromImage(volumeNode, image: sitk.Image) -> None:
    """Set a volume node's voxels and geometry from an LPS SimpleITK scalar image."""
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D scalar image, got {image.GetDimension()}-D with "
                         f"{image.GetNumberOfComponentsPerPixel()} components")
    slicer.util.updateVolumeFromArray(volumeNode, sitk.GetArrayFromImage(image))
    volumeNode.SetIJKToRASMatrix(_arrayToMatrix(_ijkToRasFromImage(image)))


def gridTransformFromDisplacement(field: sitk.Image) -> slicer.vtkOrientedGridTransform:
    """A VTK grid transform (RAS mm) from an LPS displacement field on its own grid.

    The returned transform, stored with ``SetAndObserveTransformFromParent``, maps a point p to
    ``p + u(p)`` (pull-back, the resampling direction; docs/conventions.md).
    """
    if field.GetDimension() != 3 or field.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError(f"expected a 3-D field with 3 components, got {field.GetDimension()}-D with "
                         f"{field.GetNumberOfComponentsPerPixel()} components")
    vectors = sitk.GetArrayFromImage(field).astype(np.float64) * np.diag(RAS_FROM_LPS)  # (k, j, i, 3), RAS
    grid = vtk.vtkImageData()
    grid.SetDimensions(field.GetSize())
    grid.SetSpacing(field.GetSpacing())
    grid.SetOrigin((RAS_FROM_LPS @ np.array(field.GetOrigin())).tolist())
    scalars = numpy_support.numpy_to_vtk(vectors.reshape(-1, 3), deep=True, array_type=vtk.VTK_DOUBLE)
    scalars.SetNumberOfComponents(3)
    grid.GetPointData().SetScalars(scalars)
    direction = np.eye(4)
    direction[:3, :3] = RAS_FROM_LPS @ np.array(field.GetDirection()).reshape(3, 3)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetGridDirectionMatrix(_arrayToMatrix(direction))
    transform.SetInterpolationModeToLinear()
    return transform


def displacementFromGridTransform(transformNode) -> sitk.Image:
    """The LPS displacement field (float64 vectors, mm) of a grid transform node, on the node's own grid.

    The inverse of :func:`gridTransformFromDisplacement`: the node's "from parent" grid transform, which maps
    p to ``p + u(p)`` (pull-back), read as the ITK field ``u`` in LPS (docs/conventions.md)."""
    transform = transformNode.GetTransformFromParent()
    if not transform.IsA("vtkOrientedGridTransform") or transform.GetDisplacementGrid() is None:
        raise ValueError(f"transform '{transformNode.GetName()}' is not a grid transform")
    grid = transform.GetDisplacementGrid()
    size = grid.GetDimensions()
    vectors = numpy_support.vtk_to_numpy(grid.GetPointData().GetScalars()).astype(np.float64)
    vectors = (vectors * transform.GetDisplacementScale() + transform.GetDisplacementShift()) @ RAS_FROM_LPS
    field = sitk.GetImageFromArray(vectors.reshape(size[2], size[1], size[0], 3), isVector=True)
    field.SetSpacing(grid.GetSpacing())
    field.SetOrigin((RAS_FROM_LPS @ np.array(grid.GetOrigin())).tolist())
    direction = _matrixToArray(transform.GetGridDirectionMatrix())[:3, :3]
    field.SetDirection((RAS_FROM_LPS @ direction).ravel().tolist())
    return field


def nodeIds(scene) -> set[str]:
    """IDs of all nodes in ``scene``."""
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


def removeNodesAddedSince(scene, previousIds: set[str]) -> None:
    """Remove every node of ``scene`` whose ID is not in ``previousIds`` (display, storage, colour nodes too)."""
    for nodeId in nodeIds(scene) - previousIds:
        node = scene.GetNodeByID(nodeId)
        if node is not None:
            scene.RemoveNode(node)


@contextlib.contextmanager
def removedOnExit(scene) -> Iterator[None]:
    """Remove, on leaving the block, every node added to ``scene`` inside it (for temporary nodes)."""
    before = nodeIds(scene)
    try:
        yield
    finally:
        removeNodesAddedSince(scene, before)


def _labelmapNode(scene):
    return scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("__rcreg_temp__"))


def segmentationToLabelImage(segmentationNode, segmentIds: Sequence[str], referenceVolumeNode) -> sitk.Image:
    """The listed segments as one label image (uint16, LPS) on ``referenceVolumeNode``'s grid.

    Segment ``segmentIds[n]`` gets label value ``n + 1``; 0 is background.
    """
    scene = segmentationNode.GetScene()
    with removedOnExit(scene):
        labelmap = _labelmapNode(scene)
        ids = vtk.vtkStringArray()
        for segmentId in segmentIds:
            ids.InsertNextValue(segmentId)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, ids, labelmap, referenceVolumeNode) or labelmap.GetImageData() is None:
            raise ValueError(f"cannot export segmentation '{segmentationNode.GetName()}' to a labelmap")
        return volumeNodeToImage(labelmap, sitk.sitkUInt16)


def updateSegmentationFromLabelImage(segmentationNode, labels: sitk.Image, segmentIds: Sequence[str]) -> None:
    """Replace the listed segments of ``segmentationNode`` with label ``n + 1`` of ``labels`` (LPS)."""
    scene = segmentationNode.GetScene()
    with removedOnExit(scene):
        labelmap = _labelmapNode(scene)
        updateVolumeNodeFromImage(labelmap, sitk.Cast(labels, sitk.sitkUInt16))
        ids = vtk.vtkStringArray()
        for segmentId in segmentIds:
            ids.InsertNextValue(segmentId)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentationNode, ids):
            raise ValueError(f"cannot import the warped labels into segmentation '{segmentationNode.GetName()}'")
