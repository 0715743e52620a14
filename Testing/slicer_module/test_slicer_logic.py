"""The module's logic on Slicer's real MRML scene (slicer-core), checked against SimpleITK and Slicer itself.

Volumes have oblique directions and anisotropic spacing (RecursiveCascadeRegistrationLib.testing).
The model is an analytic predictor or a randomly initialised small RecursiveCascadeNetwork, without
test-time refinement, so that these checks see the model's own field (refinement:
test_slicer_refinement.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import torch
import vtk

import rcreg
from RecursiveCascadeRegistrationLib import RecursiveCascadeRegistrationLogic, RegistrationCancelled, testing
from RecursiveCascadeRegistrationLib.logic import metricsTable
from RecursiveCascadeRegistrationLib.nodes import (displacementFromGridTransform, segmentationToLabelImage,
                                                   volumeNodeToImage)

FLIP = np.array([-1.0, -1.0, 1.0])  # RAS ↔ LPS


def randomNetwork():
    """A small randomly initialised cascade (affine + 2 VTN cascades) on a 32³ network grid."""
    torch.manual_seed(0)
    network = rcreg.RecursiveCascadeNetwork("vtn", n_cascades=2, affine=True, width=0.25).eval()
    network.card = {"grid": {"shape": [32, 32, 32]}}
    return network


MODELS = {"sinusoid": lambda: testing.SinusoidPredictor(amplitude=1.5), "random-network": randomNetwork}


@pytest.fixture(params=sorted(MODELS))
def run(request, scene):
    """Phantom pair registered through the logic (network only); returns a namespace of nodes, metrics and the model."""
    fixed, fixedSeg, moving, movingSeg = testing.addPhantomPair(scene)
    model = MODELS[request.param]()
    logic = RecursiveCascadeRegistrationLogic()
    metrics = logic.registerVolumes(fixed, moving, model=model, movingSegmentationNode=movingSeg,
                                    fixedSegmentationNode=fixedSeg, refineIterations=0)
    return dict(scene=scene, fixed=fixed, fixedSeg=fixedSeg, moving=moving, movingSeg=movingSeg, model=model,
                logic=logic, metrics=metrics)


def writeWithSlicer(node, path) -> str:
    """Save a volume or transform with Slicer's own storage node for it (its RAS→LPS handling, not ours)."""
    storage = node.CreateDefaultStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(node), f"Slicer could not write {path}"
    return str(path)


def pointsInside(volumeNode, count=200, margin=0.1, seed=0) -> np.ndarray:
    """Random RAS points inside the volume's grid (continuous indices away from the border)."""
    rng = np.random.default_rng(seed)
    dims = np.array(volumeNode.GetImageData().GetDimensions())
    ijk = rng.uniform(margin * (dims - 1), (1 - margin) * (dims - 1), size=(count, 3))
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return ijk @ m[:3, :3].T + m[:3, 3]


def maskOf(segmentationNode, name, reference) -> np.ndarray:
    segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(name)
    return sitk.GetArrayFromImage(segmentationToLabelImage(segmentationNode, [segmentId], reference)) == 1


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_volume_conversion_matches_slicer_file_writer(scene, tmp_path):
    fixed, _, _, _ = testing.addPhantomPair(scene)
    ours = volumeNodeToImage(fixed)
    written = sitk.ReadImage(writeWithSlicer(fixed, tmp_path / "fixed.nrrd"))
    np.testing.assert_allclose(ours.GetOrigin(), written.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(ours.GetSpacing(), written.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(ours.GetDirection(), written.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(written))
    assert not np.allclose(np.reshape(ours.GetDirection(), (3, 3)), np.eye(3), atol=0.1)  # really oblique
    assert len(set(np.round(ours.GetSpacing(), 6))) == 3  # really anisotropic


def test_transform_from_parent_equals_engine_field(run, tmp_path):
    """FromParent(p) = p + u(p), u being the engine's transform (its transform.h5: the compact field)
    computed from files Slicer wrote itself."""
    engine = rcreg.register(writeWithSlicer(run["moving"], tmp_path / "moving.nrrd"),
                            writeWithSlicer(run["fixed"], tmp_path / "fixed.nrrd"), model=run["model"], refine=0)
    itkTransform = engine.transform
    fromParent = run["logic"].outputTransformNode.GetTransformFromParent()
    points = pointsInside(run["fixed"])
    ours = np.array([fromParent.TransformPoint(p) for p in points])
    expected = np.array([itkTransform.TransformPoint((p * FLIP).tolist()) for p in points]) * FLIP
    displacement = np.linalg.norm(expected - points, axis=1)
    assert displacement.max() > 0.5  # a real deformation, in mm
    np.testing.assert_allclose(ours, expected, atol=1e-3)


def test_slicer_reads_the_engines_transform_file(run, tmp_path):
    """The engine's transform.h5 (its field stored as compressed float32) loads through Slicer's own
    transform storage node as the same mapping (reference: the engine's ITK transform in memory)."""
    engine = rcreg.register(writeWithSlicer(run["moving"], tmp_path / "moving.nrrd"),
                            writeWithSlicer(run["fixed"], tmp_path / "fixed.nrrd"), model=run["model"], refine=0)
    out = engine.save(tmp_path / "out", figure=False)
    import h5py  # an engine dependency: the file is the compact one

    with h5py.File(out / "transform.h5") as h5:
        stored = [g["TransformParameters"] for g in h5["TransformGroup"].values()
                  if g["TransformType"][0].startswith(b"DisplacementField")]
        assert len(stored) == 1 and stored[0].dtype == np.float32 and stored[0].compression == "gzip"
    reader = slicer.vtkMRMLTransformStorageNode()
    reader.SetFileName(str(out / "transform.h5"))
    loaded = run["scene"].AddNewNodeByClass("vtkMRMLTransformNode", "loaded")
    assert reader.ReadData(loaded)
    points = pointsInside(run["fixed"], seed=2)
    expected = np.array([engine.transform.TransformPoint((p * FLIP).tolist()) for p in points]) * FLIP
    assert np.linalg.norm(expected - points, axis=1).max() > 0.5
    fromParent = loaded.GetTransformFromParent()
    for transform in ([fromParent] if not fromParent.IsA("vtkGeneralTransform") else
                      [fromParent.GetConcatenatedTransform(i) for i in range(fromParent.GetNumberOfConcatenatedTransforms())]):
        if transform.IsA("vtkOrientedGridTransform"):
            transform.SetInterpolationModeToLinear()  # Slicer reads grids as cubic; ITK's (ours) is linear
    np.testing.assert_allclose([fromParent.TransformPoint(p) for p in points], expected, atol=1e-3)


def test_resampling_under_transform_matches_warped_volume(run):
    assertSlicerResamplingMatchesWarped(run["logic"], run["moving"], run["fixed"])


def assertSlicerResamplingMatchesWarped(logic, moving, fixed) -> None:
    """Slicer's own resampling of the moving volume through the logic's transform gives its warped volume."""
    moving.SetAndObserveTransformNodeID(logic.outputTransformNode.GetID())
    resampled = slicer.util.arrayFromVolume(slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(moving, fixed))
    moving.SetAndObserveTransformNodeID(None)
    warped = slicer.util.arrayFromVolume(logic.outputVolumeNode)
    assert warped.shape == resampled.shape == slicer.util.arrayFromVolume(fixed).shape
    # Compare where the pulled-back point lies inside the moving grid (outside, the two libraries pad differently).
    fromParent = logic.outputTransformNode.GetTransformFromParent()
    rasToIjk = vtk.vtkMatrix4x4()
    moving.GetRASToIJKMatrix(rasToIjk)
    m = np.array([[rasToIjk.GetElement(r, c) for c in range(4)] for r in range(4)])
    ijkToRas = vtk.vtkMatrix4x4()
    fixed.GetIJKToRASMatrix(ijkToRas)
    f = np.array([[ijkToRas.GetElement(r, c) for c in range(4)] for r in range(4)])
    k, j, i = np.indices(warped.shape).reshape(3, -1)
    ras = np.stack([i, j, k], 1) @ f[:3, :3].T + f[:3, 3]
    mapped = np.array([fromParent.TransformPoint(p) for p in ras]) @ m[:3, :3].T + m[:3, 3]
    dims = np.array(moving.GetImageData().GetDimensions())
    inside = np.all((mapped >= 0.01) & (mapped <= dims - 1.01), axis=1)
    assert inside.mean() > 0.5
    difference = np.abs(resampled.ravel() - warped.ravel())[inside]
    assert difference.max() < 0.05  # intensities 20…200; ITK and VTK trilinear interpolation agree
    assert np.abs(warped.ravel()[inside] - 20).max() > 100  # the structures are inside the compared region


def test_warped_segmentation_gives_reported_dice(run):
    fixed, metrics = run["fixed"], run["metrics"]
    assert set(metrics["dice"]) == set(testing.SEGMENT_NAMES)
    for name in testing.SEGMENT_NAMES:
        ours = dice(maskOf(run["logic"].outputSegmentationNode, name, fixed), maskOf(run["fixedSeg"], name, fixed))
        assert metrics["dice"][name] == pytest.approx(ours, abs=1e-9)
    assert metrics["dice_mean"] == pytest.approx(np.mean(list(metrics["dice"].values())))


def test_slicer_hardening_of_the_segmentation_agrees(run):
    """Slicer's own transform of the moving segmentation gives nearly the engine's Dice."""
    fixed = run["fixed"]
    clone = run["scene"].AddNewNodeByClass("vtkMRMLSegmentationNode", "hardened")
    clone.Copy(run["movingSeg"])
    clone.SetAndObserveTransformNodeID(run["logic"].outputTransformNode.GetID())
    slicer.vtkSlicerTransformLogic.hardenTransform(clone)
    for name in testing.SEGMENT_NAMES:
        hardened = dice(maskOf(clone, name, fixed), maskOf(run["fixedSeg"], name, fixed))
        assert hardened == pytest.approx(run["metrics"]["dice"][name], abs=0.05)


def test_transform_round_trips_through_h5(run, tmp_path):
    node = run["logic"].outputTransformNode
    path = writeWithSlicer(node, tmp_path / "transform.h5")

    reader = slicer.vtkMRMLTransformStorageNode()
    reader.SetFileName(str(path))
    loaded = run["scene"].AddNewNodeByClass("vtkMRMLGridTransformNode", "loaded")
    assert reader.ReadData(loaded)
    original, reloaded = node.GetTransformFromParent(), loaded.GetTransformFromParent()
    grid, gridBack = original.GetDisplacementGrid(), reloaded.GetDisplacementGrid()
    np.testing.assert_array_equal(slicer.util.arrayFromGridTransform(loaded), slicer.util.arrayFromGridTransform(node))
    np.testing.assert_allclose(gridBack.GetOrigin(), grid.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(gridBack.GetSpacing(), grid.GetSpacing(), atol=1e-9)
    for r in range(3):
        for c in range(3):
            assert reloaded.GetGridDirectionMatrix().GetElement(r, c) == pytest.approx(
                original.GetGridDirectionMatrix().GetElement(r, c), abs=1e-9)
    # Slicer reads grid transforms with cubic interpolation; ours (like ITK's) is linear.
    reloaded.SetInterpolationModeToLinear()
    points = pointsInside(run["fixed"], seed=1)
    before = np.array([original.TransformPoint(p) for p in points])
    after = np.array([reloaded.TransformPoint(p) for p in points])
    np.testing.assert_allclose(after, before, atol=1e-6)
    # ITK reads the same file as the same pull-back field in LPS.
    itk = sitk.ReadTransform(str(path))
    viaItk = np.array([itk.TransformPoint((p * FLIP).tolist()) for p in points]) * FLIP
    np.testing.assert_allclose(viaItk, before, atol=1e-4)


def test_displacement_from_the_grid_transform_is_the_field_slicer_writes(run, tmp_path):
    """The node's grid read back as an LPS field equals what ITK reads from Slicer's own writer's file
    (geometry and vectors), so front ends can write it with ``rcreg.io.write_transform``."""
    node = run["logic"].outputTransformNode
    path = writeWithSlicer(node, tmp_path / "transform.h5")
    reference = sitk.DisplacementFieldTransform(sitk.ReadTransform(path)).GetDisplacementField()
    field = displacementFromGridTransform(node)
    assert field.GetSize() == reference.GetSize()
    np.testing.assert_allclose(field.GetOrigin(), reference.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(field.GetSpacing(), reference.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(field.GetDirection(), reference.GetDirection(), atol=1e-9)
    vectors = sitk.GetArrayFromImage(field)
    np.testing.assert_allclose(vectors, sitk.GetArrayFromImage(reference), atol=1e-9)
    assert np.abs(vectors).max() > 0.1  # a real field, not zeros


def test_displacement_from_a_linear_transform_is_refused(scene):
    linear = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "rigid")
    with pytest.raises(ValueError, match="'rigid' is not a grid transform"):
        displacementFromGridTransform(linear)


def test_grid_display_over_fixed_volume(run):
    displayNode = run["logic"].outputTransformNode.GetDisplayNode()
    assert displayNode.GetVisualizationMode() == slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID
    assert displayNode.GetRegionNode() is run["fixed"]
    assert displayNode.GetVisibility2D()


def test_metrics_keyed_by_segment_name(run):
    metrics = run["metrics"]
    assert 0.0 <= metrics["folding_fraction"] <= 1.0
    assert set(metrics["dice_before"]) == set(metrics["hd95_mm"]) == set(testing.SEGMENT_NAMES)
    rows = dict(metricsTable(metrics))
    assert f"Dice {testing.SEGMENT_NAMES[0]}" in rows and "Folded voxels (det J ≤ 0)" in rows


def test_unmatched_segment_is_warped_but_not_scored(scene):
    fixed, fixedSeg, moving, movingSeg = testing.addPhantomPair(scene)
    fixedSeg.GetSegmentation().RemoveSegment(
        fixedSeg.GetSegmentation().GetSegmentIdBySegmentName(testing.SEGMENT_NAMES[1]))
    logic = RecursiveCascadeRegistrationLogic()
    metrics = logic.registerVolumes(fixed, moving, model=testing.SinusoidPredictor(),
                                    movingSegmentationNode=movingSeg, fixedSegmentationNode=fixedSeg)
    assert list(metrics["dice"]) == [testing.SEGMENT_NAMES[0]]
    assert metrics["dice_mean"] == pytest.approx(metrics["dice"][testing.SEGMENT_NAMES[0]])
    assert logic.outputSegmentationNode.GetSegmentation().GetNumberOfSegments() == 2


def test_cancel_leaves_no_new_nodes(scene):
    fixed, fixedSeg, moving, movingSeg = testing.addPhantomPair(scene)
    nodesBefore = scene.GetNumberOfNodes()

    def cancelLate(fraction, message):
        if fraction >= 0.95:
            raise RegistrationCancelled("cancelled")

    with pytest.raises(RegistrationCancelled):
        RecursiveCascadeRegistrationLogic().registerVolumes(
            fixed, moving, model=testing.SinusoidPredictor(), movingSegmentationNode=movingSeg,
            progressCallback=cancelLate)
    assert scene.GetNumberOfNodes() == nodesBefore


def test_linear_parent_transform_is_honoured(scene):
    fixed, _, _, _ = testing.addPhantomPair(scene)
    plain = volumeNodeToImage(fixed)
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 5.0)  # 5 mm towards R = −5 mm in LPS x
    shift.SetMatrixTransformToParent(matrix)
    fixed.SetAndObserveTransformNodeID(shift.GetID())
    moved = volumeNodeToImage(fixed)
    np.testing.assert_allclose(np.subtract(moved.GetOrigin(), plain.GetOrigin()), (-5.0, 0.0, 0.0), atol=1e-9)


def test_nonlinear_parent_transform_is_refused(run):
    run["moving"].SetAndObserveTransformNodeID(run["logic"].outputTransformNode.GetID())
    with pytest.raises(ValueError, match="non-linear transform"):
        RecursiveCascadeRegistrationLogic().registerVolumes(run["fixed"], run["moving"], model=run["model"])


def test_missing_volume_is_a_clear_error(scene):
    fixed, _, _, _ = testing.addPhantomPair(scene)
    with pytest.raises(ValueError, match="fixed and a moving volume"):
        RecursiveCascadeRegistrationLogic().registerVolumes(fixed, None)


def test_only_the_outputs_are_added_to_the_scene(scene):
    fixed, fixedSeg, moving, movingSeg = testing.addPhantomPair(scene)
    before = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
    logic = RecursiveCascadeRegistrationLogic()
    logic.registerVolumes(fixed, moving, model=testing.SinusoidPredictor(), movingSegmentationNode=movingSeg,
                          fixedSegmentationNode=fixedSeg)
    added = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())} - before
    outputs = (logic.outputVolumeNode, logic.outputTransformNode, logic.outputSegmentationNode)
    expected = {node.GetID() for node in outputs} | {node.GetDisplayNode().GetID() for node in outputs}
    assert added == expected


def test_linear_output_transform_is_refused(scene):
    fixed, _, moving, _ = testing.addPhantomPair(scene)
    linear = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "rigid")
    with pytest.raises(ValueError, match="'rigid' is linear"):
        RecursiveCascadeRegistrationLogic().registerVolumes(fixed, moving, model=testing.SinusoidPredictor(),
                                                            outputTransformNode=linear)


def test_given_output_nodes_are_filled(scene):
    fixed, _, moving, _ = testing.addPhantomPair(scene)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mine")
    transform = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "my transform")
    logic = RecursiveCascadeRegistrationLogic()
    logic.registerVolumes(fixed, moving, model=testing.SinusoidPredictor(), outputVolumeNode=volume,
                          outputTransformNode=transform)
    assert logic.outputVolumeNode is volume and logic.outputTransformNode is transform
    assert slicer.util.arrayFromVolume(volume).shape == slicer.util.arrayFromVolume(fixed).shape
    assert isinstance(transform.GetTransformFromParent(), slicer.vtkOrientedGridTransform)
    assert logic.outputSegmentationNode is None
