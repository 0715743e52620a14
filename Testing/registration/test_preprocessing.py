"""Network grid geometry, intensity normalisation and resampling onto the grid (analytic references)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from volumes import make_image, rotation
from rcreg.io import InputError
from rcreg.preprocessing import (FOREGROUND_MARGIN_MM, card_grid, foreground_region, network_grid, normalize,
                                 preprocess, preprocess_labels)

DIRECTION = rotation(0.35, -0.25, 0.6)


def corners(image: sitk.Image, low=None, high=None) -> np.ndarray:
    """Physical positions of the outer voxel *edges* (index −½ … n − ½) of an image or index box."""
    low = np.full(3, -0.5) if low is None else np.asarray(low) - 0.5
    high = np.asarray(image.GetSize()) - 0.5 if high is None else np.asarray(high) + 0.5
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in c])
                     for c in itertools.product(*zip(low, high))])


def test_network_grid_is_isotropic_centred_and_covers_fov():
    fixed = make_image([50, 20, 12], [0.8, 1.5, 3.0], DIRECTION, [10, -5, 2], lambda p: p[..., 0])
    shape = (32, 24, 16)
    grid = network_grid(fixed, shape)
    assert grid.GetSize() == shape
    extents = np.array([50 * 0.8, 20 * 1.5, 12 * 3.0])
    spacing = max(extents / shape)
    np.testing.assert_allclose(grid.GetSpacing(), [spacing] * 3)
    np.testing.assert_allclose(grid.GetDirection(), fixed.GetDirection())
    centre = lambda im: np.asarray(im.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in im.GetSize()]))
    np.testing.assert_allclose(centre(grid), centre(fixed), atol=1e-9)
    # Every corner of the fixed field of view lies within the grid's field of view; the limiting axis fits exactly.
    indices = np.array([grid.TransformPhysicalPointToContinuousIndex(c.tolist()) for c in corners(fixed)])
    assert indices.min() >= -0.5 - 1e-9 and np.all(indices.max(axis=0) <= np.array(shape) - 0.5 + 1e-9)
    limiting = int(np.argmax(extents / shape))
    assert indices[:, limiting].min() == pytest.approx(-0.5) and indices[:, limiting].max() == pytest.approx(shape[limiting] - 0.5)


def test_network_grid_on_mask_bounding_box():
    fixed = make_image([40, 30, 20], [1.0, 1.0, 2.0], DIRECTION, [0, 0, 0], lambda p: p[..., 0])
    mask = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(fixed)
    mask[10:30, 5:11, 4:9] = 1  # i 10…29, j 5…10, k 4…8
    grid = network_grid(fixed, (16, 16, 16), mask)
    assert grid.GetSpacing()[0] == pytest.approx(max(20 * 1.0, 6 * 1.0, 5 * 2.0) / 16)
    box_centre = fixed.TransformContinuousIndexToPhysicalPoint([19.5, 7.5, 6.0])
    np.testing.assert_allclose(grid.TransformContinuousIndexToPhysicalPoint([7.5] * 3), box_centre, atol=1e-9)
    with pytest.raises(InputError, match="empty"):
        network_grid(fixed, (16, 16, 16), mask * 0)


def _blank(size, spacing, origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(list(spacing))
    image.SetOrigin(list(origin))
    return image


def test_foreground_region_bounds_both_images_plus_the_margin():
    """Axis-aligned images, so the expected box follows by hand: fixed index = (p − origin) / spacing."""
    assert FOREGROUND_MARGIN_MM == 8.0  # the numbers below are worked out for 8 mm
    fixed = _blank([80, 80, 60], [1.0, 1.0, 2.0])
    fixed[10:60, 10:60, 10:40] = 1.0  # i 10…59, j 10…59, k 10…39
    fixed[75, 75, 55] = 1.0  # an isolated noisy voxel must not widen the box
    fixed[77, 3:8, 50] = 0.04  # below the foreground level
    moving = _blank([40, 40, 40], [2.0, 2.0, 2.0])
    moving[2:11, 10:21, 5:26] = 0.5  # physical x 4…20, y 20…40, z 10…50 = fixed i 4…20, j 20…40, k 5…25
    low, high = foreground_region(fixed)
    np.testing.assert_allclose(low, [2, 2, 6])  # 10 − 8 voxels, 10 − 4 voxels of 2 mm
    np.testing.assert_allclose(high, [67, 67, 43])
    low, high = foreground_region(fixed, moving)  # the union: i from 4, k from 5; i clipped at 0
    np.testing.assert_allclose(low, [0, 2, 1])
    np.testing.assert_allclose(high, [67, 67, 43])
    empty = _blank([20, 20, 20], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(np.stack(foreground_region(empty)), [[0, 0, 0], [19, 19, 19]])


def test_card_grid_covers_what_the_card_says():
    fixed = _blank([80, 80, 60], [1.0, 1.0, 2.0])
    fixed[10:60, 10:60, 10:40] = 1.0
    shape = [16, 16, 16]
    whole = card_grid({"grid": {"shape": shape}}, fixed)
    assert whole.GetSpacing()[0] == pytest.approx(120.0 / 16)  # the field of view's longest axis, 60 × 2 mm
    assert card_grid({"grid": {"shape": shape, "region": "image"}}, fixed).GetSpacing() == whole.GetSpacing()
    cropped = card_grid({"grid": {"shape": shape, "region": "foreground"}}, fixed)
    assert cropped.GetSpacing()[0] == pytest.approx((43 - 6 + 1) * 2.0 / 16)  # k 6…43 from the test above
    box_centre = fixed.TransformContinuousIndexToPhysicalPoint([34.5, 34.5, 24.5])
    np.testing.assert_allclose(cropped.TransformContinuousIndexToPhysicalPoint([7.5] * 3), box_centre, atol=1e-9)
    mask = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(fixed)
    mask[0:16, 0:8, 0:4] = 1  # a mask wins over the card's region
    masked = card_grid({"grid": {"shape": shape, "region": "foreground"}}, fixed, mask=mask)
    assert masked.GetSpacing()[0] == pytest.approx(16.0 / 16)
    with pytest.raises(ValueError, match="grid region must be one of image, foreground, got 'brain'"):
        card_grid({"grid": {"shape": shape, "region": "brain"}}, fixed)


def test_normalize_window_and_percentile():
    values = np.arange(-1500, 1500, 7, dtype=np.int16)
    out = normalize(values, {"type": "window", "min": -1000, "max": 400})
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.clip((values + 1000) / 1400, 0, 1), atol=1e-6)
    rng = np.random.default_rng(0)
    mr = rng.gamma(2.0, 50.0, size=10000)
    lo, hi = np.percentile(mr, [2, 98])
    np.testing.assert_allclose(normalize(mr, {"type": "percentile", "low": 2, "high": 98}),
                               np.clip((mr - lo) / (hi - lo), 0, 1), atol=1e-5)
    sparse = np.zeros(1000)
    sparse[:3] = 5.0  # the 1st and 99th percentiles coincide: min…max is used instead
    np.testing.assert_allclose(normalize(sparse, {"type": "percentile", "low": 1, "high": 99}), sparse / 5.0)
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize(values, {"type": "zscore"})


def test_preprocess_samples_the_physical_ramp_in_itk_index_order():
    """A linear ramp in LPS space is resampled exactly by trilinear interpolation: compare every
    network voxel with the ramp evaluated at its physical centre."""
    ramp = lambda p: 2.0 * p[..., 0] - 1.0 * p[..., 1] + 3.0 * p[..., 2]
    moving = make_image([14, 12, 9], [2.0, 2.2, 3.0], rotation(-0.2, 0.3, 0.1), [-14, -12, -12], ramp)
    fixed = make_image([10, 10, 10], [2.0, 2.0, 2.0], DIRECTION, [-9, -9, -9], lambda p: p[..., 0])
    card = {"grid": {"shape": [20, 18, 16]}, "normalization": {"type": "window", "min": -200, "max": 200}}
    grid = network_grid(fixed, card["grid"]["shape"])
    tensor, returned = preprocess(moving, card, grid)
    assert returned is grid and tensor.shape == (1, 1, 20, 18, 16) and str(tensor.dtype) == "torch.float32"
    values = tensor[0, 0].numpy()
    checked = 0
    for index in itertools.product(range(0, 20, 3), range(0, 18, 3), range(0, 16, 3)):
        p = np.asarray(grid.TransformIndexToPhysicalPoint(index))
        q = np.asarray(moving.TransformPhysicalPointToContinuousIndex(p.tolist()))
        if np.all(q >= 0) and np.all(q <= np.asarray(moving.GetSize()) - 1):
            assert values[index] == pytest.approx((ramp(p) + 200) / 400, abs=1e-5)
            checked += 1
        elif np.any(q < -0.5) or np.any(q > np.asarray(moving.GetSize()) - 0.5):
            assert values[index] == 0.0  # padding outside the image
    assert checked > 50


def test_preprocess_path_builds_its_own_grid(tmp_path):
    image = make_image([30, 20, 10], [1.0, 1.0, 3.0], np.eye(3), [0, 0, 0], lambda p: np.sin(p[..., 0] / 5) + p[..., 2])
    sitk.WriteImage(image, str(tmp_path / "image.nrrd"))
    card = {"grid": {"shape": [16, 16, 16]}, "normalization": {"type": "percentile", "low": 1, "high": 99}}
    tensor, grid = preprocess(tmp_path / "image.nrrd", card)
    assert tensor.shape == (1, 1, 16, 16, 16)
    assert grid.GetSpacing() == pytest.approx((30 / 16,) * 3)
    assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0 and float(tensor.max()) > 0.9


def test_preprocess_labels_takes_the_nearest_voxel():
    moving = make_image([14, 12, 9], [2.0, 2.2, 3.0], rotation(-0.2, 0.3, 0.1), [-14, -12, -12],
                        lambda p: (np.floor(p[..., 0] / 4) % 5 + 1) * (p[..., 2] > -4), np.uint8)
    fixed = make_image([10, 10, 10], [2.0, 2.0, 2.0], DIRECTION, [-9, -9, -9], lambda p: p[..., 0])
    grid = network_grid(fixed, (12, 12, 12))
    labels = preprocess_labels(moving, grid)
    assert labels.shape == (1, 1, 12, 12, 12) and labels.dtype == torch.int64
    values = sitk.GetArrayFromImage(moving)
    checked = []
    for index in itertools.product(range(0, 12, 2), repeat=3):
        q = np.asarray(moving.TransformPhysicalPointToContinuousIndex(grid.TransformIndexToPhysicalPoint(index)))
        nearest = np.floor(q + 0.5).astype(int)
        if np.all(np.abs(q - nearest) < 0.45):  # away from ties between two voxels
            inside = np.all(nearest >= 0) and np.all(nearest < moving.GetSize())
            expected = values[nearest[2], nearest[1], nearest[0]] if inside else 0
            assert int(labels[0, 0][index]) == expected
            checked.append(expected)
    assert len(checked) > 30 and len(set(checked)) >= 4  # several labels and the outside were compared
