"""MRML scenes and the nodes the web app builds in them from SimpleITK images, with the Slicer module's conversions.

Two kinds of scene: the page's scene (trame-slicer's, drawn in the browser; touched only by the server's event
loop) and a private scene per registration (:func:`new_scene`, touched only by its worker thread). Only
SimpleITK images cross between them, so no VTK object is shared between threads.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import SimpleITK as sitk

from .lib import import_lib

__all__ = ["new_scene", "volume_node", "segmentation_node", "grid_transform_node", "segment_name", "segment_color"]

# Segment colours (RGB 0…1), in label order; none is green, the colour of the deformation grid.
_PALETTE = ((0.30, 0.55, 1.00), (1.00, 0.80, 0.20), (1.00, 0.35, 0.40), (0.80, 0.45, 1.00), (1.00, 0.55, 0.10),
            (0.35, 0.85, 0.95), (0.95, 0.45, 0.75), (0.70, 0.60, 0.40))


def new_scene():
    """A scene with the logics ``registerVolumes`` needs (the Lib's ``headless.newScene``)."""
    return import_lib().headless.newScene()


def segment_name(label: int, names: Optional[Mapping[int, str]] = None) -> str:
    """The segment name of label value ``label``: from ``names``, else ``"Label <value>"``.

    Segments are matched between the fixed and moving segmentations by name, so equal values match.
    """
    return (names or {}).get(label, f"Label {label}")


def segment_color(index: int) -> tuple[float, float, float]:
    """The colour of the ``index``-th segment (0-based)."""
    return _PALETTE[index % len(_PALETTE)]


def volume_node(scene, image: sitk.Image, name: str):
    """A scalar volume node of ``scene`` holding ``image`` (LPS → RAS by the module's ``nodes`` conversion)."""
    nodes = import_lib().nodes
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    nodes.updateVolumeNodeFromImage(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def segmentation_node(scene, labels: sitk.Image, reference, name: str, names: Optional[Mapping[int, str]] = None):
    """A segmentation node of ``scene`` with one segment per non-zero value of ``labels``, in increasing order,
    named by :func:`segment_name` and geometry from the volume node ``reference``."""
    nodes = import_lib().nodes
    array = sitk.GetArrayViewFromImage(labels)
    values = [int(v) for v in np.unique(array) if v]
    if not values:
        raise ValueError(f"{name}: the label map has no labels (every voxel is 0)")
    lookup = np.zeros(int(array.max()) + 1, dtype=np.uint16)
    lookup[values] = np.arange(1, len(values) + 1)  # the module's import wants labels 1…N in segment order
    consecutive = sitk.GetImageFromArray(lookup[array])
    consecutive.CopyInformation(labels)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    segmentation = node.GetSegmentation()
    ids = [segmentation.AddEmptySegment("", segment_name(value, names), segment_color(n))
           for n, value in enumerate(values)]
    nodes.updateSegmentationFromLabelImage(node, consecutive, ids)
    return node


def grid_transform_node(scene, field: sitk.Image, name: str):
    """A grid transform node of ``scene`` whose "from parent" maps p ↦ p + u(p) for the LPS field ``u``."""
    nodes = import_lib().nodes
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", scene.GenerateUniqueName(name))
    node.SetAndObserveTransformFromParent(nodes.gridTransformFromDisplacement(field))
    return node
