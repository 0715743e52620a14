"""Test-time refinement, mask, initial alignment and the engine's errors through the module's logic.

The reference is analytic: the moving phantom is the fixed one moved by a known shift and smooth
deformation (RecursiveCascadeRegistrationLib.testing), so the true fixed → moving mapping of every
point is known without the engine.
"""
from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
import torch

import rcreg
from RecursiveCascadeRegistrationLib import RecursiveCascadeRegistrationLogic, RegistrationCancelled, choices, engine, testing
from RecursiveCascadeRegistrationLib.logic import interfaceMessage, metricsTable
from test_slicer_logic import assertSlicerResamplingMatchesWarped, pointsInside, randomNetwork

AMPLITUDE_MM = 1.5


@pytest.fixture(scope="module")
def module():
    return importlib.import_module("RecursiveCascadeRegistration")


def knownDisplacement(ras: np.ndarray) -> np.ndarray:
    """A smooth deformation (RAS mm) of the moving phantom, about the size of the phantom's structures."""
    return AMPLITUDE_MM * np.sin(2 * np.pi * ras[:, [1, 2, 0]] / 40.0)


def trueMapping(points: np.ndarray) -> np.ndarray:
    """Where the phantom at fixed points p lies in the moving volume: q with q − shift − d(q) = p."""
    mapped = points.copy()
    for _ in range(50):  # a contraction: |∇d| ≤ 2π · 1.5 / 40 < 0.25
        mapped = points + np.asarray(testing.PAIR_SHIFT) + knownDisplacement(mapped)
    return mapped


class ZeroPredictor:
    """A network stand-in with no deformation: the refinement starts from the identity."""

    __name__ = "zero"
    card = {"grid": {"shape": [24, 24, 24]}}

    def __call__(self, fixed, moving):
        return torch.zeros(1, 3, *fixed.shape[2:])


@pytest.fixture
def pair(scene):
    return testing.addPhantomPair(scene, displacement=knownDisplacement)


def fieldError(logic, fixed, segmentation) -> float:
    """Mean distance (mm) between the transform's mapping and the true one, near the phantom's structures."""
    points = pointsInside(fixed, count=2000)
    fromParent = logic.outputTransformNode.GetTransformFromParent()
    inside = segmentDistanceBelow(segmentation, fixed, points, 3.0)
    ours = np.array([fromParent.TransformPoint(p) for p in points[inside]])
    return float(np.linalg.norm(ours - trueMapping(points[inside]), axis=1).mean())


def segmentDistanceBelow(segmentation, reference, points: np.ndarray, distance: float) -> np.ndarray:
    """Which RAS points lie within ``distance`` mm of a structure of the fixed phantom."""
    from RecursiveCascadeRegistrationLib.nodes import segmentationToLabelImage, worldIJKToRAS
    import SimpleITK as sitk

    ids = [segmentation.GetSegmentation().GetNthSegmentID(n) for n in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    labels = segmentationToLabelImage(segmentation, ids, reference) > 0
    near = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(labels, insideIsPositive=False, useImageSpacing=True)) < distance
    rasToIjk = np.linalg.inv(worldIJKToRAS(reference))
    i, j, k = np.round(points @ rasToIjk[:3, :3].T + rasToIjk[:3, 3]).astype(int).T
    return near[k, j, i]


def test_refinement_runs_and_approaches_the_known_deformation(pair):
    fixed, fixedSeg, moving, _ = pair
    logic = RecursiveCascadeRegistrationLogic()
    networkOnly = logic.registerVolumes(fixed, moving, model=ZeroPredictor(), refineIterations=0)
    before = fieldError(logic, fixed, fixedSeg)
    assert networkOnly["refinement"] == {"iterations": 0}
    assert before > 2.0  # the shift alone is 2.7 mm

    metrics = logic.registerVolumes(fixed, moving, model=ZeroPredictor(), refineIterations=20)
    after = fieldError(logic, fixed, fixedSeg)
    levels = metrics["refinement"]["levels_run"]
    assert metrics["refinement"]["iterations"] == 20 and sum(level["iterations"] for level in levels) > 20
    assert all(level["similarity_after"] < level["similarity_before"] for level in levels)
    assert after < before / 2, (before, after)
    assert "Refinement" in dict(metricsTable(metrics))
    assertSlicerResamplingMatchesWarped(logic, moving, fixed)


def test_model_none_registers_by_refinement_alone(pair):
    fixed, fixedSeg, moving, _ = pair
    logic = RecursiveCascadeRegistrationLogic()
    metrics = logic.registerVolumes(fixed, moving, model=choices.NO_MODEL, refineIterations=20)
    assert metrics["model"] == "none" and metrics["network_grid"] is None
    assert fieldError(logic, fixed, fixedSeg) < 1.5
    with pytest.raises(ValueError, match="refinement alone"):
        logic.registerVolumes(fixed, moving, model=choices.NO_MODEL, refineIterations=0)


def test_refinement_options_reach_the_engine(pair):
    fixed, _, moving, _ = pair
    metrics = RecursiveCascadeRegistrationLogic().registerVolumes(
        fixed, moving, model=choices.NO_MODEL, refineIterations=5, diffeomorphic=True, refineSimilarity="mse",
        refineWeight=0.5, refineRegularization="bending", refineLevels=2, refineSpacing=2.0)
    options = metrics["refinement"]
    assert (options["diffeomorphic"], options["similarity"], options["weight"], options["regularization"],
            options["levels"], options["spacing"]) == (True, "mse", 0.5, "bending", 2, 2.0)
    assert len(options["levels_run"]) == 2
    assert metrics["folding_fraction"] == 0.0


def test_cancel_during_refinement_removes_created_nodes(pair, scene):
    fixed, fixedSeg, moving, movingSeg = pair
    nodesBefore = scene.GetNumberOfNodes()
    messages = []

    def refining() -> bool:
        return bool(messages) and messages[-1].startswith("refining")

    with pytest.raises(RegistrationCancelled):
        RecursiveCascadeRegistrationLogic().registerVolumes(
            fixed, moving, model=ZeroPredictor(), refineIterations=20, movingSegmentationNode=movingSeg,
            fixedSegmentationNode=fixedSeg, progressCallback=lambda fraction, message: messages.append(message),
            cancelCallback=refining)
    assert messages[-1] == messages[[m.startswith("refining") for m in messages].index(True)]  # stopped at once
    assert scene.GetNumberOfNodes() == nodesBefore


def test_engine_cancel_is_a_registration_cancel(pair, scene):
    """rcreg's own Cancelled (from the engine's cancel check) reaches the caller as RegistrationCancelled."""
    fixed, _, moving, _ = pair
    nodesBefore = scene.GetNumberOfNodes()

    class CancellingPredictor(ZeroPredictor):
        def __call__(self, fixed, moving):
            raise rcreg.refinement.Cancelled("registration cancelled")

    with pytest.raises(RegistrationCancelled):
        RecursiveCascadeRegistrationLogic().registerVolumes(fixed, moving, model=CancellingPredictor())
    assert scene.GetNumberOfNodes() == nodesBefore


def test_mask_and_initial_alignment_reach_the_engine(scene):
    fixed, fixedSeg, moving, _ = testing.addPhantomPair(scene)
    logic = RecursiveCascadeRegistrationLogic()
    plain = logic.registerVolumes(fixed, moving, model=ZeroPredictor(), refineIterations=0)
    masked = logic.registerVolumes(fixed, moving, model=ZeroPredictor(), refineIterations=0, fixedMaskNode=fixedSeg,
                                   initialAlignment="geometry")
    # The network grid covers the mask's bounding box only: finer spacing on the same grid size.
    assert masked["network_grid"]["spacing_mm"] < 0.8 * plain["network_grid"]["spacing_mm"]
    # Geometry alignment: the translation between the centres of the two fields of view, in LPS.
    centres = [worldCentre(node) for node in (moving, fixed)]
    np.testing.assert_allclose(masked["initial_translation_mm"], (centres[0] - centres[1]) * [-1, -1, 1], atol=1e-6)
    assert masked["initial_alignment"] == "geometry"


def worldCentre(volumeNode) -> np.ndarray:
    """RAS centre of a volume's field of view (centre of its corner voxels)."""
    from RecursiveCascadeRegistrationLib.nodes import worldIJKToRAS

    dims = np.array(volumeNode.GetImageData().GetDimensions())
    matrix = worldIJKToRAS(volumeNode)
    return matrix[:3, :3] @ ((dims - 1) / 2) + matrix[:3, 3]


def test_engine_errors_name_the_logic_parameters(scene):
    fixed, _, moving, _ = testing.addPhantomPair(scene)
    with pytest.raises(ValueError) as error:
        RecursiveCascadeRegistrationLogic().registerVolumes(fixed, moving, model=randomNetwork(), cascades=9,
                                                            refineIterations=0)
    assert str(error.value).startswith("cascades must be 0…2") and "--" not in str(error.value)
    assert interfaceMessage("several models are installed (a, b); choose one with --model") == \
        "several models are installed (a, b); choose one with model"
    assert interfaceMessage("--refine 3 with --refine-similarity mi and --mask") == \
        "refineIterations 3 with refineSimilarity mi and fixedMaskNode"


def test_panel_choices_match_the_engine():
    assert choices.REFINE_SIMILARITIES == rcreg.options.SIMILARITIES
    assert choices.INITIAL_ALIGNMENTS == rcreg.options.ALIGNMENTS
    assert choices.NO_MODEL == rcreg.registration.NO_MODEL


def test_model_selector_round_trips_every_model_value():
    bundled = engine.bundledModelNames()
    assert bundled
    for model in ("", *bundled, choices.NO_MODEL, "/data/my model.pt"):
        choice = choices.modelChoice(model, bundled)
        assert choice in choices.modelChoices(bundled)
        path = model if choice == choices.FROM_FILE else ""
        assert choices.modelFromChoice(choice, path) == model
    assert choices.modelFromChoice(choices.FROM_FILE, "") == ""  # a file not yet chosen: the default model


def test_requirements_file_lists_what_the_engine_imports():
    assert list(engine.requirements()) == ["torch", "scipy"]
    assert engine.requirements()["torch"] == "torch>=2.1"


def test_sample_data_registers_the_phantom_pair(module, scene, monkeypatch):
    registered = {}
    sampleData = types.SimpleNamespace(SampleDataLogic=types.SimpleNamespace(
        registerCustomSampleDataSource=lambda **kwargs: registered.update(kwargs)))
    assert module.registerSampleData() is False  # slicer-core has no SampleData module
    monkeypatch.setitem(sys.modules, "SampleData", sampleData)
    assert module.registerSampleData() is True
    assert registered["sampleName"] == module.SAMPLE_NAME
    assert registered["thumbnailFileName"].endswith(".png")
    before = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    registered["customDownloader"](None)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == before + 2


def test_flip_average_option_reaches_the_engine(pair):
    """``flipAverage=True`` averages the predictor's flow over the volumes as they are and mirrored along each
    axis: a constant shift ignores the mirroring, so each axis's own mirrored view negates that axis's part
    and the mean is half the shift ((3 − 1) / 4)."""
    fixed, _, moving, _ = pair
    logic = RecursiveCascadeRegistrationLogic()
    points = pointsInside(fixed, count=50)
    shift = lambda f, m: torch.full((1, 3, *f.shape[2:]), 0.8)
    moved = {}
    for flip in (False, True):
        metrics = logic.registerVolumes(fixed, moving, model=shift, refineIterations=0, flipAverage=flip)
        assert metrics["flip_average"] is flip
        fromParent = logic.outputTransformNode.GetTransformFromParent()
        moved[flip] = np.array([np.subtract(fromParent.TransformPoint(p), p) for p in points])
    np.testing.assert_allclose(moved[True], 0.5 * moved[False], atol=1e-4)
    assert np.linalg.norm(moved[False], axis=1).min() > 0.2  # the shift really moved the points


def test_symmetric_option_reaches_the_engine(pair):
    """``symmetric=True`` averages the predictor's flow with the inverse of its flow for the swapped pair: a
    predictor that ignores the order of the volumes (a pure bias, like a network's drift) is cancelled up to
    second-order terms (|∇u| |u| / 2: 6 % of |u| for this sinusoid)."""
    fixed, _, moving, _ = pair
    logic = RecursiveCascadeRegistrationLogic()
    points = pointsInside(fixed, count=500)
    moved = {}
    for symmetric in (False, True):
        metrics = logic.registerVolumes(fixed, moving, model=testing.SinusoidPredictor(amplitude=0.75),
                                        refineIterations=0, symmetric=symmetric)
        assert metrics["symmetric"] is symmetric
        fromParent = logic.outputTransformNode.GetTransformFromParent()
        moved[symmetric] = np.linalg.norm([np.subtract(fromParent.TransformPoint(p), p) for p in points], axis=1).max()
    assert moved[True] < 0.1 * moved[False] and moved[False] > 0.5, moved
