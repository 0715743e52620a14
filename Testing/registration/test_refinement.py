"""Test-time refinement in physical space (rcreg.register's ``refine``), against known deformations.

The reference is always SimpleITK: the fixed image is the moving image resampled through a known cubic
B-spline transform, and the true pull-back field is that transform sampled by
``TransformToDisplacementField``; the refined field is compared with it.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from rcreg.fields import field_jacobian_determinant
from rcreg.refinement import Cancelled
from rcreg.registration import register
from volumes import make_image, rotation

CARD = {"grid": {"shape": [24, 24, 24]}, "normalization": {"type": "percentile", "low": 1, "high": 99}}


def texture(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """Three hundred random Gaussian blobs (σ 2–4 mm) inside a 32 mm ball: structure for local similarities."""
    rng = np.random.default_rng(seed)
    out = np.zeros(points.shape[:-1])
    for _ in range(300):
        centre = rng.uniform(-1, 1, 3)
        centre *= rng.uniform(0, 32) / np.linalg.norm(centre)
        sigma = rng.uniform(2.0, 4.0)
        out += rng.uniform(0.3, 1.0) * np.exp(-((points - centre) ** 2).sum(-1) / (2 * sigma ** 2))
    return 100.0 * out


def _pair(amplitude_mm: float):
    """(fixed, moving, true field, foreground): an oblique 2 mm volume and a known smooth deformation of it
    (cubic B-spline, 5³ control points, coefficients uniform in ±``amplitude_mm``)."""
    moving = make_image([40, 40, 40], [2.0, 2.0, 2.0], rotation(0.2, -0.1, 0.3), [-39.0, -38.0, -40.0], texture)
    transform = sitk.BSplineTransformInitializer(moving, [2, 2, 2], order=3)
    rng = np.random.default_rng(1)
    transform.SetParameters(rng.uniform(-amplitude_mm, amplitude_mm, len(transform.GetParameters())).tolist())
    fixed = sitk.Resample(moving, moving, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, moving.GetSize(), moving.GetOrigin(),
                                              moving.GetSpacing(), moving.GetDirection())
    foreground = sitk.GetArrayFromImage(fixed) > 20.0
    return fixed, moving, sitk.GetArrayFromImage(field), foreground


@pytest.fixture(scope="module")
def deformed_pair():
    return _pair(8.0)


def _error(result, truth: np.ndarray, foreground: np.ndarray) -> float:
    """Mean |û − u| (mm) over the fixed foreground."""
    return float(np.linalg.norm(sitk.GetArrayFromImage(result.displacement) - truth, axis=-1)[foreground].mean())


def _constant(shift_voxels: float):
    """A predictor returning a constant, wrong flow (a deliberately poor initial field)."""

    def predictor(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        return torch.full((1, 3, *fixed.shape[2:]), shift_voxels)

    predictor.card = CARD
    return predictor


def test_refinement_divides_the_error_of_a_poor_initial_field_by_three(deformed_pair):
    fixed, moving, truth, fg = deformed_pair
    poor = _constant(1.0)  # 1 voxel of a 24³ grid over 80 mm ≈ 3.5 mm along every axis, plus the deformation
    initial = register(moving, fixed, model=poor, refine=0)
    refined = register(moving, fixed, model=poor, refine={"iterations": 20, "spacing": 2.0})
    before, after = _error(initial, truth, fg), _error(refined, truth, fg)
    assert before > 2.0 and after < before / 3, (before, after)
    assert refined.metrics["refinement"]["levels_run"][-1]["iterations"] > 0


def test_refinement_alone_recovers_a_known_field_and_exports_an_exact_transform(deformed_pair, tmp_path):
    fixed, moving, truth, fg = deformed_pair
    identity_error = float(np.linalg.norm(truth, axis=-1)[fg].mean())
    result = register(moving, fixed, model="none", refine={"iterations": 20, "spacing": 2.0})
    assert _error(result, truth, fg) < identity_error / 3
    out = result.save(tmp_path / "out")
    transform = sitk.ReadTransform(str(out / "transform.h5"))
    again = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    warped = sitk.ReadImage(str(out / "warped.nii.gz"))
    np.testing.assert_allclose(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(warped), atol=1e-3)


@pytest.mark.parametrize("similarity", ["ncc", "pearson", "mse", "mi"])
def test_every_similarity_reduces_the_error(deformed_pair, similarity):
    fixed, moving, truth, fg = deformed_pair
    identity_error = float(np.linalg.norm(truth, axis=-1)[fg].mean())
    result = register(moving, fixed, model="none", refine={"iterations": 20, "similarity": similarity, "spacing": 2.0})
    assert _error(result, truth, fg) < 0.6 * identity_error, similarity


def test_mutual_information_registers_an_inverted_contrast(deformed_pair):
    """MI needs no intensity relation beyond a statistical one: a negated moving image still registers."""
    fixed, moving, truth, fg = deformed_pair
    inverted = sitk.Cast(-1.0 * moving, sitk.sitkFloat32)
    identity_error = float(np.linalg.norm(truth, axis=-1)[fg].mean())
    result = register(inverted, fixed, model="none", refine={"iterations": 20, "similarity": "mi", "spacing": 2.0})
    assert _error(result, truth, fg) < 0.6 * identity_error


def test_diffeomorphic_refinement_never_folds_on_a_large_deformation():
    """Coefficients up to 16 mm and a weak regulariser: the displacement parameterisation folds (without
    the folding penalty; with it, far less), the velocity parameterisation does not, all recover the field."""
    fixed, moving, truth, fg = _pair(16.0)
    identity_error = float(np.linalg.norm(truth, axis=-1)[fg].mean())
    detj = {}
    for name, options in {"displacement": {"folding_weight": 0.0}, "penalised": {},
                          "diffeomorphic": {"diffeomorphic": True}}.items():
        result = register(moving, fixed, model="none",
                          refine={"iterations": 20, "spacing": 2.0, "weight": 0.05, **options})
        detj[name] = field_jacobian_determinant(result.displacement)
        assert _error(result, truth, fg) < identity_error / 5, name
    assert detj["displacement"].min() <= 0 < detj["diffeomorphic"].min()
    assert (detj["penalised"] <= 0).sum() < 0.5 * (detj["displacement"] <= 0).sum()


def test_zero_iterations_keep_the_network_field(deformed_pair):
    fixed, moving, _, _ = deformed_pair
    result = register(moving, fixed, model=_constant(0.4), refine=0)
    spacing = result.metrics["network_grid"]["spacing_mm"]
    expected = np.asarray(fixed.GetDirection()).reshape(3, 3) @ np.full(3, 0.4 * spacing)  # D · diag(s) · flow
    field = sitk.GetArrayFromImage(result.displacement).reshape(-1, 3)
    np.testing.assert_allclose(field, np.broadcast_to(expected, field.shape), atol=1e-6)
    assert result.metrics["refinement"] == {"iterations": 0} and "refine" not in result.metrics["timings_s"]


def test_mask_limits_the_similarity_to_the_mask(deformed_pair):
    """The moving image is the fixed one with its upper half shifted by 6 mm: without a mask the
    refinement recovers the shift there; with a mask over the lower half it never sees it."""
    fixed, _, _, _ = deformed_pair
    shifted = sitk.Resample(fixed, fixed, sitk.TranslationTransform(3, [-6.0, 0.0, 0.0]), sitk.sitkLinear, 0.0,
                            sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(fixed)
    array[22:] = sitk.GetArrayFromImage(shifted)[22:]  # moving(p) = fixed(p − 6 mm x) in slices k ≥ 22
    moving = sitk.GetImageFromArray(array)
    moving.CopyInformation(fixed)
    mask = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(fixed)
    mask[:, :, :18] = 1
    upper = sitk.GetArrayFromImage(fixed)[24:] > 20.0

    def moved(**extra) -> float:
        """Mean displacement (mm) over the structure of the upper half."""
        result = register(moving, fixed, model="none", refine={"iterations": 10, "spacing": 2.0}, **extra)
        return float(np.linalg.norm(sitk.GetArrayFromImage(result.displacement)[24:], axis=-1)[upper].mean())

    masked, unmasked = moved(mask=mask), moved()
    assert masked < 2.0 and unmasked > 4.0, (masked, unmasked)


def test_cancel_stops_the_refinement(deformed_pair):
    fixed, moving, _, _ = deformed_pair
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        register(moving, fixed, model="none", refine=10, cancel=cancel)
    assert len(calls) == 4


def test_model_none_needs_iterations_and_has_no_symmetric_network(deformed_pair):
    fixed, moving, _, _ = deformed_pair
    with pytest.raises(ValueError, match="refinement alone"):
        register(moving, fixed, model="none", refine=0)
    with pytest.raises(ValueError, match="^symmetric averages the network's two directions: model 'none' has no network$"):
        register(moving, fixed, model="none", refine=5, symmetric=True)
    with pytest.raises(ValueError, match="^flip_average averages the network's mirrored predictions: model 'none' has no network$"):
        register(moving, fixed, model="none", refine=5, flip_average=True)
