"""rcreg.resampling.resample: integer images come back in their own type, rounded and clamped (references: numpy
linear interpolation by hand; the value range of the type)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from rcreg.cli import main
from rcreg.resampling import resample


def _image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 1.0, 1.5))
    return image


def test_an_int16_image_is_rounded_back_to_int16():
    """A 0.3-voxel shift along x: out[x] = 0.7 a[x] + 0.3 a[x + 1], rounded to the nearest integer (negative
    values too: truncation towards zero would differ by one on about half of them)."""
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, (6, 7, 12)).astype(np.int16)  # (z, y, x)
    out = resample(_image(array), _image(array), sitk.TranslationTransform(3, (0.6, 0.0, 0.0)))  # 0.3 × 2 mm
    assert out.GetPixelID() == sitk.sitkInt16
    exact = 0.7 * array[..., :-1] + 0.3 * array[..., 1:]
    clear = np.abs(np.abs(exact - np.trunc(exact)) - 0.5) > 1e-3  # not a tie (ties: float32 decides)
    assert clear.mean() > 0.8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out)[..., :-1][clear], np.rint(exact)[clear])
    measured = resample(_image(array), _image(array), sitk.TranslationTransform(3, (0.6, 0.0, 0.0)), keep_type=False)
    assert measured.GetPixelID() == sitk.sitkFloat32  # images only measured or drawn are not rounded
    np.testing.assert_allclose(sitk.GetArrayFromImage(measured)[..., :-1], exact, atol=1e-3)


def test_float_images_stay_float32_and_labels_keep_their_values():
    array = np.linspace(0, 1, 6 * 7 * 8).reshape(6, 7, 8)
    shift = sitk.TranslationTransform(3, (0.6, 0.0, 0.0))
    out = resample(_image(array), _image(array), shift)
    assert out.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(out)[..., :-1], 0.7 * array[..., :-1] + 0.3 * array[..., 1:],
                               atol=1e-6)
    labels = _image((array * 5).astype(np.uint8))
    assert sitk.GetArrayFromImage(resample(labels, labels, shift, labels=True)).max() == 5


def test_apply_clamps_a_bspline_overshoot_into_the_uint8_range(tmp_path):
    """B-spline interpolation of a 0 → 255 step overshoots past 255 and below 0; a uint8 output is clamped to
    [0, 255] (a plain cast would wrap around)."""
    step = np.zeros((8, 8, 16), dtype=np.uint8)
    step[..., 8:] = 255
    sitk.WriteImage(_image(step), str(tmp_path / "step.nrrd"))
    sitk.WriteTransform(sitk.TranslationTransform(3, (0.7, 0.0, 0.0)), str(tmp_path / "shift.tfm"))
    assert main(["apply", "-t", str(tmp_path / "shift.tfm"), "--reference", str(tmp_path / "step.nrrd"),
                 "--image", str(tmp_path / "step.nrrd"), "--output", str(tmp_path / "out.nrrd"), "-n", "bspline"]) == 0
    out = sitk.ReadImage(str(tmp_path / "out.nrrd"))
    floating = sitk.Resample(_image(step), _image(step), sitk.TranslationTransform(3, (0.7, 0.0, 0.0)),
                             sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    assert sitk.GetArrayFromImage(floating).max() > 255.5 and sitk.GetArrayFromImage(floating).min() < -0.5
    values = sitk.GetArrayFromImage(out)
    assert out.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(values, np.clip(np.rint(sitk.GetArrayFromImage(floating)), 0, 255))


def test_wide_integers_keep_values_float32_and_sitk_round_would_lose():
    """int32 values near ±2·10⁹ (beyond float32's 2²⁴ exact integers and sitk.Round's 2³⁰) shifted by whole
    voxels come back exactly; a 0.5-voxel shift gives the exact mean of neighbours, rounded."""
    array = np.array([-2_000_000_001, 2_000_000_001, 1_999_999_999, -7, 16_777_217, 0], dtype=np.int32)
    image = _image(np.tile(array, (3, 3, 1)))
    out = resample(image, image, sitk.TranslationTransform(3, (2.0, 0.0, 0.0)))  # one voxel (2 mm) along x
    assert out.GetPixelID() == sitk.sitkInt32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out)[1, 1, :-1], array[1:])
    half = resample(image, image, sitk.TranslationTransform(3, (1.0, 0.0, 0.0)))
    means = (array[:-1].astype(np.int64) + array[1:]) / 2
    np.testing.assert_array_equal(sitk.GetArrayFromImage(half)[1, 1, :-1], np.rint(means))


def test_wide_integers_measured_as_float32_are_rounded_once():
    """``keep_type=False`` (an image only measured) returns float32, but an int32 image is not cast to float32
    before interpolating: each value is the exact mean of its neighbours, rounded once to float32."""
    array = np.array([16_777_217, 16_777_219, 2_000_000_001, 1_999_999_998, 5], dtype=np.int32)
    image = _image(np.tile(array, (3, 3, 1)))
    half = resample(image, image, sitk.TranslationTransform(3, (1.0, 0.0, 0.0)), keep_type=False)
    assert half.GetPixelID() == sitk.sitkFloat32
    means = ((array[:-1].astype(np.float64) + array[1:]) / 2).astype(np.float32)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(half)[1, 1, :-1], means)
