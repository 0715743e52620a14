"""The bundled models: complete cards, and each one really registers a known smooth deformation of real
anatomy (the FSL MNI152 2 mm brain of the `test` sample subset; CT: a synthetic body-and-lungs phantom, on
which the CT model alone is known to fail: an expected failure that turns into an error once it passes;
with the default test-time refinement it succeeds)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from rcreg import data
from rcreg.fields import field_jacobian_determinant, round_trip_error
from rcreg.models import list_models
from rcreg.registration import register

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from accuracy_cases import simulated_contrast, tissue_labels  # noqa: E402  (the benchmark's contrast, one recipe)

BUNDLED = dict(list_models())


def test_brain_and_ct_models_are_bundled_with_complete_cards():
    assert {"brain_mr_t1", "chest_ct"} <= set(BUNDLED)
    assert BUNDLED["chest_ct"]["region"] == "body"  # never picked for a head CT
    for name, card in BUNDLED.items():
        assert card["modality"] in ("MR", "CT") and len(card["grid"]["shape"]) == 3, name
        assert card["training"]["iterations"] > 0 and card["training"]["data"]["train"], name
        for case in card["evaluation"]["cases"]:  # held-out scores stored by Training/bundle_model.py
            assert 0 < case["model"]["dice_mean"] <= 1 and case["model"]["folding_pct"] >= 0, (name, case["case"])
            assert 0 < case["model_refined"]["dice_mean"] <= 1, (name, case["case"])  # the default registration too


def _known_field(image: sitk.Image, amplitude_mm: float, seed: int) -> tuple[sitk.Image, sitk.Image]:
    """(fixed, true field): ``image`` resampled through a SimpleITK cubic B-spline transform (5³ mesh, coefficients
    uniform in ±``amplitude_mm``; the image's minimum outside), and that transform's displacement field (SimpleITK's
    own): the field a registration of ``image`` to ``fixed`` should find."""
    transform = sitk.BSplineTransformInitializer(image, [2, 2, 2], order=3)
    rng = np.random.default_rng(seed)
    transform.SetParameters(rng.uniform(-amplitude_mm, amplitude_mm, len(transform.GetParameters())).tolist())
    fixed = sitk.Resample(image, image, transform, sitk.sitkLinear, float(np.min(sitk.GetArrayViewFromImage(image))))
    truth = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, image.GetSize(), image.GetOrigin(),
                                              image.GetSpacing(), image.GetDirection())
    return fixed, truth


def _check_registers(moving: sitk.Image, fixed: sitk.Image, model: str, mask: np.ndarray, refine=0,
                     removed: float = 0.5) -> None:
    """At least the share ``removed`` of the correlation mismatch inside ``mask`` is removed, no folding."""
    result = register(moving, fixed, model=model, device="cpu", refine=refine)
    f = sitk.GetArrayFromImage(fixed)[mask]
    before = np.corrcoef(sitk.GetArrayFromImage(moving)[mask], f)[0, 1]
    after = np.corrcoef(sitk.GetArrayFromImage(result.warped)[mask], f)[0, 1]
    assert after > before + removed * (1 - before), (before, after)
    detj = field_jacobian_determinant(result.displacement).transpose(2, 1, 0)  # (z, y, x) like the arrays
    assert (detj[mask] <= 0).mean() < 1e-3


def _brain_case() -> tuple[sitk.Image, sitk.Image]:
    brain = sitk.ReadImage(str(data.fetch(["mni152_2mm_t1_brain"])["mni152_2mm_t1_brain"]), sitk.sitkFloat32)
    return brain, _known_field(brain, 6.0, seed=3)[0]


def _ct_phantom() -> tuple[sitk.Image, sitk.Image]:
    size, spacing = 96, 3.0
    z, y, x = np.mgrid[:size, :size, :size] * spacing - (size - 1) * spacing / 2
    body = (x / 140) ** 2 + (y / 100) ** 2 < 1
    lungs = ((np.abs(x) - 60) / 45) ** 2 + (y / 60) ** 2 + (z / 110) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0) + np.where(lungs & body, -850.0, 0.0)
    hu += 300.0 * ((x / 15) ** 2 + ((y - 70) / 15) ** 2 < 1)  # a spine-like bright rod
    ct = sitk.GetImageFromArray(hu.astype(np.float32))
    ct.SetSpacing([spacing] * 3)
    return ct, _known_field(ct, 8.0, seed=4)[0]


@pytest.mark.network
def test_brain_model_alone_registers_a_known_deformation():
    brain, fixed = _brain_case()
    _check_registers(brain, fixed, "brain_mr_t1", sitk.GetArrayFromImage(fixed) > 0)


@pytest.mark.network
@pytest.mark.slow
def test_brain_model_with_default_refinement_registers_a_known_deformation():
    brain, fixed = _brain_case()
    _check_registers(brain, fixed, "brain_mr_t1", sitk.GetArrayFromImage(fixed) > 0, refine=None, removed=0.8)


@pytest.mark.xfail(strict=True, reason="known weakness, measured by this test: the CT model alone (64³ grid, 2 training "
                   "CTs) makes this small deformation of a smooth geometric phantom worse (correlation 0.74 → 0.70)")
def test_ct_model_alone_registers_a_known_deformation():
    ct, fixed = _ct_phantom()
    _check_registers(ct, fixed, "chest_ct", sitk.GetArrayFromImage(fixed) > -500)


@pytest.mark.slow
def test_ct_model_with_default_refinement_registers_a_known_deformation():
    ct, fixed = _ct_phantom()
    _check_registers(ct, fixed, "chest_ct", sitk.GetArrayFromImage(fixed) > -500, refine=None, removed=0.8)


def _at_2mm(image: sitk.Image, outside: float) -> sitk.Image:
    """``image`` (1 mm) smoothed and resampled to 2 mm voxels over the same box, ``outside`` beyond it."""
    grid = sitk.Image([int(round(n * s / 2.0)) for n, s in zip(image.GetSize(), image.GetSpacing())], sitk.sitkUInt8)
    grid.SetSpacing([2.0] * 3)
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    return sitk.Resample(sitk.SmoothingRecursiveGaussian(image, 0.8), grid, sitk.Transform(), sitk.sitkLinear, outside)


def _colin27_2mm() -> sitk.Image:
    """Colin27 (held out from training: docs/data.md), skull-stripped, at 2 mm."""
    return _at_2mm(sitk.ReadImage(str(data.fetch(["colin27_t1_brain"])["colin27_t1_brain"]), sitk.sitkFloat32), 0.0)


def _foreground(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image) > 0.1 * float(sitk.GetArrayViewFromImage(image).max())


def _mean_norm(field: sitk.Image, mask: np.ndarray) -> float:
    return float(np.linalg.norm(sitk.GetArrayFromImage(field), axis=-1)[mask].mean())


def _held_out_known_field(t2_like: bool = False) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """(moving, fixed, true field): a held-out brain — T1, or the benchmark's simulated T2-like contrast of it
    (benchmarks/accuracy_cases.py, docs/contrast.md) — and a known deformation of it (:func:`_known_field`)."""
    brain = _colin27_2mm()
    if t2_like:
        brain = simulated_contrast(brain, tissue_labels(brain), "T2-like")
    return (brain, *_known_field(brain, 8.0, seed=5))


def _difference(a: sitk.Image, b: sitk.Image) -> sitk.Image:
    return sitk.Compose([sitk.VectorIndexSelectionCast(a, c) - sitk.VectorIndexSelectionCast(b, c) for c in range(3)])


@pytest.mark.network
def test_brain_model_alone_reduces_a_known_field_on_held_out_anatomy():
    """The network alone on a held-out brain deformed by a known field: the mean error against that field
    drops by at least 20 %."""
    moving, fixed, truth = _held_out_known_field()
    mask = _foreground(fixed)
    estimate = register(moving, fixed, model="brain_mr_t1", refine=0, device="cpu").displacement
    before, after = _mean_norm(truth, mask), _mean_norm(_difference(estimate, truth), mask)
    assert after < 0.8 * before, (before, after)


@pytest.mark.network
def test_the_default_registration_recovers_a_known_field_in_a_t2_like_contrast():
    """The brain model was trained on T1 only; on a T2-like held-out brain the default registration (network +
    local-NCC refinement, which needs only the same contrast on both sides) still cuts the error against the
    known field to under a quarter of the deformation."""
    moving, fixed, truth = _held_out_known_field(t2_like=True)
    mask = _foreground(fixed)
    estimate = register(moving, fixed, device="cpu").displacement
    before, after = _mean_norm(truth, mask), _mean_norm(_difference(estimate, truth), mask)
    assert after < 0.25 * before, (before, after)


@pytest.mark.network
@pytest.mark.xfail(strict=True, reason="issue 12's contrast coverage, not met: the T1-trained brain network alone "
                   "leaves 1.87× its T1 error on a T2-like brain (1.30 vs 0.70 mm here, v6; worse than no registration "
                   "on the benchmark's Colin27 field: docs/contrast.md)")
def test_brain_model_alone_is_as_accurate_in_a_t2_like_contrast_as_in_t1():
    errors = []
    for t2_like in (False, True):
        moving, fixed, truth = _held_out_known_field(t2_like)
        estimate = register(moving, fixed, model="brain_mr_t1", refine=0, device="cpu").displacement
        errors.append(_mean_norm(_difference(estimate, truth), _foreground(fixed)))
    assert errors[1] < 1.25 * errors[0], errors


@pytest.mark.network
def test_the_network_in_bf16_finds_the_fp32_field():
    """``amp=True`` (bf16 network, the CPU default where bf16 is native) and ``amp=False`` give fields within
    0.05 mm of each other on average, and the same error against the known field to 0.02 mm."""
    moving, fixed, truth = _held_out_known_field()
    mask = _foreground(fixed)
    results = {amp: register(moving, fixed, model="brain_mr_t1", refine=0, device="cpu", amp=amp) for amp in (False, True)}
    assert [results[amp].metrics["amp"] for amp in (False, True)] == [False, True]
    fp32, bf16 = (results[amp].displacement for amp in (False, True))
    assert 0 < _mean_norm(_difference(bf16, fp32), mask) < 0.05  # > 0: bf16 really ran
    errors = [_mean_norm(_difference(field, truth), mask) for field in (fp32, bf16)]
    assert abs(errors[0] - errors[1]) < 0.02, errors


@pytest.mark.network
def test_an_image_registered_to_itself_hardly_moves_with_the_default_registration():
    """Registered to itself, a held-out brain moves less than 0.3 mm on average (default: network + refinement)."""
    brain = _colin27_2mm()
    mask = _foreground(brain)
    assert _mean_norm(register(brain, brain, device="cpu").displacement, mask) < 0.3


@pytest.mark.network
@pytest.mark.xfail(strict=True, reason="issue 12's target, not met: the brain model alone moves a held-out brain "
                   "registered to itself by 0.31 mm on average (the widened 128³ v6 here and at the benchmark's "
                   "resampling; v1 0.53: docs/ablations.md)")
def test_an_image_registered_to_itself_hardly_moves_with_the_network_alone():
    brain = _colin27_2mm()
    mask = _foreground(brain)
    assert _mean_norm(register(brain, brain, model="brain_mr_t1", refine=0, device="cpu").displacement, mask) < 0.3


@pytest.mark.network
def test_the_symmetric_network_does_not_move_an_image_registered_to_itself():
    """With ``symmetric`` (the network's flow averaged with the inverse of its flow for the swapped pair) a held-out
    brain registered to itself moves less than 0.3 mm (the issue's target) — by construction, both orders give
    the same flow, so what is left is second order: below 0.05 mm and a fifth of the plain network's motion."""
    brain = _colin27_2mm()
    mask = _foreground(brain)
    result = register(brain, brain, model="brain_mr_t1", refine=0, device="cpu", symmetric=True)
    plain = register(brain, brain, model="brain_mr_t1", refine=0, device="cpu")
    moved = _mean_norm(result.displacement, mask)
    assert result.metrics["symmetric"] and moved < 0.05 and moved < 0.2 * _mean_norm(plain.displacement, mask)


@pytest.mark.network
def test_the_flip_averaged_network_hardly_moves_an_image_registered_to_itself_and_errs_less():
    """With ``flip_average`` (the brain network's flow averaged over the pair as it is and mirrored along each axis)
    a held-out brain registered to itself moves less than 0.3 mm (the issue's target), and on a known smooth
    deformation of it the error against the known field is lower than the plain network's."""
    brain = _colin27_2mm()
    moved = _mean_norm(register(brain, brain, model="brain_mr_t1", refine=0, device="cpu",
                                flip_average=True).displacement, _foreground(brain))
    assert moved < 0.3, moved
    moving, fixed, truth = _held_out_known_field()
    mask = _foreground(fixed)
    errors = {flip: _mean_norm(_difference(register(moving, fixed, model="brain_mr_t1", refine=0, device="cpu",
                                                    flip_average=flip).displacement, truth), mask)
              for flip in (False, True)}
    assert errors[True] < errors[False], errors


@pytest.mark.network
def test_the_symmetric_network_is_inverse_consistent_and_as_accurate():
    """A held-out brain and a known deformation of it, registered both ways by the network alone: with
    ``symmetric`` the two results are inverses of each other (round trip below 0.1 mm and a quarter of the
    plain network's), and the error against the known field stays within 10 % of the plain network's."""
    moving, fixed, truth = _held_out_known_field()
    mask = _foreground(fixed)
    trips, errors = {}, {}
    for symmetric in (False, True):
        forward, backward = (register(a, b, model="brain_mr_t1", refine=0, device="cpu", symmetric=symmetric)
                             for a, b in ((moving, fixed), (fixed, moving)))
        trips[symmetric] = float(round_trip_error(forward.transform, backward.transform, fixed)[mask].mean())
        errors[symmetric] = _mean_norm(_difference(forward.displacement, truth), mask)
    assert trips[True] < min(0.1, 0.25 * trips[False]), trips
    assert errors[True] < 1.1 * errors[False], errors


def _head_ct_2mm() -> sitk.Image:
    """The TotalSegmentator head CT template at 2 mm, with air outside the head at −1000 HU as a scanner writes it."""
    template = sitk.ReadImage(str(data.fetch(["head_ct_template"])["head_ct_template"]), sitk.sitkFloat32)
    return _at_2mm(sitk.Mask(template, template != 0, outsideValue=-1000.0), -1000.0)


@pytest.mark.network
def test_a_head_ct_gets_refinement_alone_and_its_known_field_is_recovered():
    """The bundled CT model is for the body: on a head CT the default registration warns, runs without a
    network, and cuts the error against a known SimpleITK B-spline field by more than half."""
    head = _head_ct_2mm()
    fixed, truth = _known_field(head, 8.0, seed=1)
    mask = sitk.GetArrayFromImage(fixed) > -500
    with pytest.warns(UserWarning, match="no installed model is for head CT"):
        result = register(head, fixed, device="cpu")
    assert result.metrics["model"] == "none"
    error = np.linalg.norm(sitk.GetArrayFromImage(result.displacement) - sitk.GetArrayFromImage(truth), axis=-1)
    assert error[mask].mean() < 0.5 * _mean_norm(truth, mask), (error[mask].mean(), _mean_norm(truth, mask))
