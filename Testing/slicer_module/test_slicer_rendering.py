"""Slice views rendered offscreen with Slicer's own slice logic and displayable managers, checked pixel by
pixel against the volumes and segmentations they show."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from RecursiveCascadeRegistrationLib import RecursiveCascadeRegistrationLogic, display, testing
from RecursiveCascadeRegistrationLib.nodes import segmentationToLabelImage
from slice_views import OffscreenSliceView, sampleVolume, savePNG

BALL = testing.SEGMENT_NAMES[0]


@pytest.fixture
def view(scene):
    """A registered phantom pair and an axial view through both structures; returns (view, nodes)."""
    fixed, fixedSeg, moving, movingSeg = testing.addPhantomPair(scene)
    logic = RecursiveCascadeRegistrationLogic()
    logic.registerVolumes(fixed, moving, model=testing.SinusoidPredictor(amplitude=1.5),
                          movingSegmentationNode=movingSeg, fixedSegmentationNode=fixedSeg)
    for segmentation in (fixedSeg, movingSeg, logic.outputSegmentationNode):
        segmentation.GetDisplayNode().SetVisibility(False)
    logic.outputTransformNode.GetDisplayNode().SetVisibility(False)
    sliceView = OffscreenSliceView(scene, scene.applicationLogic, size=(320, 320))
    display.showInSliceViews(fixed, None, 0.0)
    sliceView.showSlice(0.0)
    return sliceView, dict(fixed=fixed, fixedSeg=fixedSeg, logic=logic)


def grey(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(float).mean(axis=-1)


def test_slice_view_shows_the_fixed_volume_where_it_is(view):
    sliceView, nodes = view
    pixels = sliceView.render()
    values, inside = sampleVolume(nodes["fixed"], sliceView.pixelsToRAS())
    assert inside.mean() > 0.2
    correlation = np.corrcoef(grey(pixels)[inside], values[inside])[0, 1]
    assert correlation > 0.9  # geometry right: the rendered slice follows the fixed volume's voxels
    assert grey(pixels)[~inside].max() == 0  # nothing drawn outside the volume


def test_fade_blends_fixed_and_warped(view):
    sliceView, nodes = view
    fixed, warped = nodes["fixed"], nodes["logic"].outputVolumeNode
    display.showInSliceViews(fixed, warped, fade=0.0)
    fixedOnly = sliceView.render()
    display.showInSliceViews(warped, None, fade=0.0)
    warpedOnly = sliceView.render()
    display.showInSliceViews(fixed, warped, fade=1.0)
    fullyWarped = sliceView.render()
    display.showInSliceViews(fixed, warped, fade=0.5)
    half = sliceView.render().astype(float)
    assert np.abs(fullyWarped.astype(float) - warpedOnly).max() <= 1
    assert np.abs(fixedOnly.astype(float) - warpedOnly).mean() > 2  # the two images differ
    np.testing.assert_allclose(half, (fixedOnly.astype(float) + warpedOnly) / 2, atol=1.5)
    values, inside = sampleVolume(warped, sliceView.pixelsToRAS())
    assert np.corrcoef(grey(warpedOnly)[inside], values[inside])[0, 1] > 0.9


def test_warped_segmentation_is_drawn_over_its_voxels(view):
    sliceView, nodes = view
    fixed, warpedSeg = nodes["fixed"], nodes["logic"].outputSegmentationNode
    without = sliceView.render()
    display.showInSliceViews(fixed, None, 0.0, warpedSeg)
    pixels = sliceView.render().astype(int)
    ballId = warpedSeg.GetSegmentation().GetSegmentIdBySegmentName(BALL)
    labels = sitk.GetArrayFromImage(segmentationToLabelImage(warpedSeg, [ballId], fixed))
    inBall, inside = sampleVolume(fixed, sliceView.pixelsToRAS(), labels)
    # The ball's colour is (0.9, 0.3, 0.2): its pixels turn red, the grey image elsewhere stays grey.
    reddening = (pixels[..., 0] - pixels[..., 2]) - (without[..., 0].astype(int) - without[..., 2])
    assert (inBall == 1).sum() > 200
    assert np.mean(reddening[inBall == 1] > 30) > 0.9
    far = inside & (inBall == 0)
    assert np.mean(reddening[far] > 30) < 0.1


def test_deformation_grid_is_drawn_over_the_fixed_volume(view, tmp_path):
    sliceView, nodes = view
    transformNode = nodes["logic"].outputTransformNode
    without = sliceView.render()
    display.showDeformationGrid(transformNode, nodes["fixed"], visible=True)
    pixels = sliceView.render().astype(int)
    green = (pixels[..., 1] - np.maximum(pixels[..., 0], pixels[..., 2])) > 60  # grid lines are green
    assert not ((without[..., 1].astype(int) - np.maximum(without[..., 0], without[..., 2])) > 60).any()
    assert 0.01 < green.mean() < 0.5
    display.showDeformationGrid(transformNode, nodes["fixed"], visible=False)
    assert np.array_equal(sliceView.render(), without)
    assert savePNG(pixels.astype(np.uint8), tmp_path / "grid.png").stat().st_size > 1000
