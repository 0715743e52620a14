"""How registration results are shown in Slicer's views (no Qt: only MRML display and composite nodes)."""
from __future__ import annotations

import numpy as np
import slicer

__all__ = ["showDeformationGrid", "showInSliceViews"]


def showDeformationGrid(transformNode, regionVolumeNode, visible: bool = True, linesPerAxis: int = 12) -> None:
    """Show ``transformNode`` as a deformed grid in the slice views, over ``regionVolumeNode``'s extent.

    The grid spacing is the largest field-of-view side of the region volume divided by ``linesPerAxis``.
    """
    transformNode.CreateDefaultDisplayNodes()
    displayNode = transformNode.GetDisplayNode()
    displayNode.SetVisualizationMode(slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID)
    displayNode.SetAndObserveRegionNode(regionVolumeNode)
    bounds = np.zeros(6)
    regionVolumeNode.GetRASBounds(bounds)
    displayNode.SetGridSpacingMm(float(max(bounds[1::2] - bounds[0::2])) / linesPerAxis)
    displayNode.SetVisibility(visible)
    displayNode.SetVisibility2D(visible)
    displayNode.SetVisibility3D(False)


def showInSliceViews(fixedVolumeNode, warpedVolumeNode, fade: float = 0.5, segmentationNode=None,
                     hiddenSegmentationNodes=()) -> None:
    """Fixed volume in the background, warped volume in the foreground at opacity ``fade`` in every slice
    view of the scene; ``segmentationNode`` (the warped moving segmentation) shown as outlines and fill,
    ``hiddenSegmentationNodes`` hidden."""
    scene = fixedVolumeNode.GetScene()
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(fixedVolumeNode.GetID())
        composite.SetForegroundVolumeID(warpedVolumeNode.GetID() if warpedVolumeNode is not None else None)
        composite.SetForegroundOpacity(fade)
    for node in hiddenSegmentationNodes:
        if node is not None and node is not segmentationNode and node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetVisibility(False)
    if segmentationNode is not None:
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.GetDisplayNode().SetVisibility(True)
        segmentationNode.GetDisplayNode().SetVisibility2DFill(True)
        segmentationNode.GetDisplayNode().SetVisibility2DOutline(True)
