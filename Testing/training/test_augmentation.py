"""Random augmentation: B-spline basis against SciPy, bounds and smoothness of the random fields,
affine maps against direct index arithmetic, intensity ranges."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline

from rcreg.spatial import jacobian_determinant
from rcreg.training.augmentation import (AugmentationSettings, augment_intensity, augment_spatial, bspline_basis,
                                         random_affine, random_smooth_field)


@pytest.mark.parametrize("size,points", [(24, 5), (17, 4), (9, 2)])
def test_bspline_basis_matches_scipy(size, points):
    h = (size - 1) / (points - 1)
    x = np.arange(size, dtype=float)
    expected = np.stack([np.nan_to_num(BSpline.basis_element(j * h + h * np.arange(-2, 3), extrapolate=False)(x))
                         for j in range(points)], axis=1)
    np.testing.assert_allclose(bspline_basis(size, points).numpy(), expected, atol=1e-12)


def test_random_smooth_field_bounded_smooth_reproducible():
    shape = (32, 28, 24)
    field = random_smooth_field(shape, 5, 3.0, torch.Generator().manual_seed(3), batch=2)
    assert field.shape == (2, 3, *shape) and field.dtype == torch.float32
    assert field.abs().max() <= 3.0 + 1e-5
    assert field.abs().max() > 0.5  # not trivially zero
    same = random_smooth_field(shape, 5, 3.0, torch.Generator().manual_seed(3), batch=2)
    other = random_smooth_field(shape, 5, 3.0, torch.Generator().manual_seed(4), batch=2)
    assert torch.equal(field, same) and not torch.equal(field, other)
    # Smooth: neighbouring voxels differ by far less than the amplitude, and nothing folds.
    assert torch.diff(field, dim=2).abs().max() < 0.5
    assert jacobian_determinant(field.double()).min() > 0


def test_random_smooth_field_zero_amplitude_is_identity():
    assert torch.count_nonzero(random_smooth_field((8, 8, 8), 5, 0.0)) == 0


def test_random_affine_ranges():
    matrix, shift = random_affine(64, rotation=10.0, scaling=0.1, translation=4.0,
                                  generator=torch.Generator().manual_seed(0))
    det = torch.linalg.det(matrix.double())
    assert det.min() >= (1 / 1.1) ** 3 - 1e-6 and det.max() <= 1.1 ** 3 + 1e-6
    assert shift.abs().max() <= 4.0 and shift.abs().max() > 2.0
    rigid, _ = random_affine(8, rotation=30.0, scaling=0.0, translation=0.0)
    eye = torch.eye(3, dtype=torch.float64).expand(8, 3, 3)
    torch.testing.assert_close(rigid.double().transpose(1, 2) @ rigid.double(), eye, atol=1e-6, rtol=0)


def test_augment_spatial_pure_translation_shifts_indices(monkeypatch):
    """With only a fixed translation, warped[i] = moving[i + t] (checked by slicing, away from the border)."""
    settings = AugmentationSettings(ffd_amplitude=0.0, rotation=0.0, scaling=0.0, translation=1.0)
    monkeypatch.setattr("rcreg.training.augmentation.random_affine",
                        lambda b, *a, **k: (torch.eye(3).expand(b, 3, 3), torch.tensor([[2.0, -1.0, 3.0]]).expand(b, 3)))
    moving = torch.rand(1, 1, 12, 10, 14)
    labels = torch.randint(0, 4, (1, 1, 12, 10, 14))
    warped, warped_labels = augment_spatial(moving, labels, settings, torch.Generator().manual_seed(0))
    torch.testing.assert_close(warped[0, 0, :-2, 1:, :-3], moving[0, 0, 2:, :-1, 3:], atol=1e-5, rtol=0)
    assert torch.equal(warped_labels[0, 0, :-2, 1:, :-3], labels[0, 0, 2:, :-1, 3:])


def test_augment_spatial_keeps_labels_integer_and_off_is_identity():
    moving = torch.rand(2, 1, 16, 16, 16)
    labels = torch.randint(0, 3, (2, 1, 16, 16, 16))
    warped, warped_labels = augment_spatial(moving, labels, AugmentationSettings(), torch.Generator().manual_seed(1))
    assert warped.shape == moving.shape and not torch.allclose(warped, moving)
    assert warped_labels.dtype == labels.dtype and set(warped_labels.unique().tolist()) <= {0, 1, 2}
    off = AugmentationSettings(ffd_amplitude=0, rotation=0, scaling=0, translation=0)
    same, same_labels = augment_spatial(moving, labels, off)
    assert same is moving and same_labels is labels


def test_augment_intensity_stays_in_unit_range():
    image = torch.rand(2, 1, 16, 16, 16)
    out = augment_intensity(image, AugmentationSettings(gamma=0.5, bias_field=0.5, noise=0.1),
                            torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, image)
    off = augment_intensity(image, AugmentationSettings(gamma=0, bias_field=0, noise=0))
    torch.testing.assert_close(off, image)


def test_random_contrast_one_table_per_pair_background_dark():
    """Both images of a chosen pair go through the same piecewise-linear table (checked against
    numpy.interp on the knots), background stays 0, and unchosen pairs are untouched."""
    from rcreg.training.augmentation import CONTRAST_KNOTS, random_contrast

    gen = torch.Generator().manual_seed(5)
    fixed, moving = torch.rand(4, 1, 6, 6, 6, generator=gen), torch.rand(4, 1, 6, 6, 6, generator=gen)
    fixed[:, :, 0] = 0.0
    seed = torch.Generator().manual_seed(11)
    out_f, out_m = random_contrast(fixed, moving, 0.5, seed)
    replay = torch.Generator().manual_seed(11)
    chosen = torch.rand(4, generator=replay) < 0.5
    knots = torch.rand(4, CONTRAST_KNOTS - 1, generator=replay).double().numpy()
    assert 0 < int(chosen.sum()) < 4  # this seed picks some pairs, not all
    xs = np.linspace(0.0, 1.0, CONTRAST_KNOTS)
    for b in range(4):
        table = np.concatenate([[0.0], knots[b]])
        for image, out in ((fixed, out_f), (moving, out_m)):
            expected = np.interp(image[b].double().numpy(), xs, table) if chosen[b] else image[b].numpy()
            np.testing.assert_allclose(out[b].numpy(), expected, atol=1e-6)
    assert torch.all(out_f[:, :, 0] == 0.0)
    unchanged = random_contrast(fixed, moving, 0.0, torch.Generator().manual_seed(11))
    assert torch.equal(unchanged[0], fixed) and torch.equal(unchanged[1], moving)


def test_random_contrast_can_invert_contrast():
    """The table need not be monotone: over many draws some pairs come out with bright and dark swapped
    (T1 → T2-like), which a gamma could never do."""
    from rcreg.training.augmentation import random_contrast

    ramp = torch.linspace(0.2, 1.0, 50).view(1, 1, 50, 1, 1).repeat(200, 1, 1, 1, 1)
    out, _ = random_contrast(ramp, ramp, 1.0, torch.Generator().manual_seed(0))
    inverted = (out[:, 0, -1, 0, 0] < out[:, 0, 0, 0, 0]).float().mean()
    assert 0.2 < inverted < 0.8
