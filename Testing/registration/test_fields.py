"""Network flow → physical displacement field, checked against ITK's own displacement-field transform."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from volumes import make_image, rotation, voxel_centres
from rcreg.fields import (compact_displacement, displacement_transform, field_jacobian_determinant, flow_on_grid,
                          flow_to_displacement, inverse_transform)
from rcreg.preprocessing import network_grid, refinement_grids


def smooth_flow(shape, amplitude: float = 2.0) -> torch.Tensor:
    """A smooth random flow ``(1, 3, X, Y, Z)`` in voxels (sum of low-frequency sines)."""
    gen = torch.Generator().manual_seed(1)
    axes = torch.meshgrid(*[torch.linspace(0, 1, n, dtype=torch.float64) for n in shape], indexing="ij")
    flow = torch.zeros(1, 3, *shape, dtype=torch.float64)
    for c in range(3):
        phase, freq = torch.rand(3, generator=gen) * 6, 1 + torch.rand(3, generator=gen) * 2
        flow[0, c] = amplitude * torch.sin(freq[0] * axes[0] + phase[0]) * torch.cos(freq[1] * axes[1] + phase[1]) \
            * torch.sin(freq[2] * axes[2] + phase[2])
    return flow.float()


def trilinear(f: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hand-computed trilinear sample of ``f`` ``(C, X, Y, Z)`` at the continuous index ``q`` (clamped to the grid)."""
    q = np.clip(q, 0, np.subtract(f.shape[1:], 1))
    lo = np.minimum(np.floor(q).astype(int), np.subtract(f.shape[1:], 2))
    w = q - lo
    return sum(f[:, lo[0] + a, lo[1] + b, lo[2] + c] * (w[0] if a else 1 - w[0]) * (w[1] if b else 1 - w[1])
               * (w[2] if c else 1 - w[2]) for a in (0, 1) for b in (0, 1) for c in (0, 1))


@pytest.mark.parametrize("mask_box", [False, True])
def test_field_matches_itk_transform_on_network_grid(mask_box):
    fixed = make_image([29, 23, 11], [1.1, 0.8, 2.7], rotation(0.4, 0.1, -0.6), [5.0, -12.0, 30.0],
                       lambda p: p[..., 0])
    mask = None
    if mask_box:  # grid over a sub-box: fixed voxels outside it take the border flow
        mask = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
        mask.CopyInformation(fixed)
        mask[5:20, 3:15, 2:9] = 1
    grid = network_grid(fixed, (20, 16, 12), mask)
    flow = smooth_flow(grid.GetSize())
    field = flow_to_displacement(flow, grid, fixed, chunk=4)
    assert field.GetPixelID() == sitk.sitkVectorFloat64
    assert field.GetSize() == fixed.GetSize() and field.GetOrigin() == fixed.GetOrigin()

    # Reference: ITK's transform over the same flow expressed in mm on the network grid itself.
    matrix = np.asarray(grid.GetDirection()).reshape(3, 3) * grid.GetSpacing()[0]
    mm = np.einsum("cd,dijk->kjic", matrix, flow[0].double().numpy())
    coarse = sitk.GetImageFromArray(mm, isVector=True)
    coarse.CopyInformation(grid)
    reference = sitk.DisplacementFieldTransform(coarse)
    points = voxel_centres(fixed).reshape(-1, 3)
    ours = sitk.GetArrayFromImage(field).reshape(-1, 3)
    inside = np.array([all(0 <= q <= n - 1 for q, n in zip(grid.TransformPhysicalPointToContinuousIndex(p), grid.GetSize()))
                       for p in points])
    assert inside.sum() > 500
    expected = np.array([reference.TransformPoint(p) for p in points[inside]]) - points[inside]
    np.testing.assert_allclose(ours[inside], expected, atol=1e-9)
    if mask_box:
        assert (~inside).sum() > 500  # and outside the grid the flow is clamped at its border
        clamp = np.array([np.clip(grid.TransformPhysicalPointToContinuousIndex(p), 0, np.subtract(grid.GetSize(), 1))
                          for p in points[~inside][:50]])
        border = np.array([grid.TransformContinuousIndexToPhysicalPoint(q) for q in clamp])
        expected_out = np.array([reference.TransformPoint(b) for b in border]) - border
        np.testing.assert_allclose(ours[~inside][:50], expected_out, atol=1e-9)


def test_target_point_formula_on_a_fixed_voxel():
    fixed = make_image([9, 8, 7], [1.5, 0.7, 2.0], rotation(0.2, 0.3, 0.1), [1.0, 2.0, 3.0], lambda p: p[..., 1])
    grid = network_grid(fixed, (10, 10, 10))
    flow = smooth_flow(grid.GetSize(), amplitude=1.5)
    field = flow_to_displacement(flow, grid, fixed)
    index = (4, 6, 2)
    p = np.asarray(fixed.TransformIndexToPhysicalPoint(index))
    q = np.asarray(grid.TransformPhysicalPointToContinuousIndex(p.tolist()))
    sample = trilinear(flow[0].double().numpy(), q)
    target = np.asarray(grid.TransformContinuousIndexToPhysicalPoint((q + sample).tolist()))
    np.testing.assert_allclose(field[index], target - p, atol=1e-9)


def test_flow_on_another_grid_maps_the_same_points():
    """A network flow moved onto the finest refinement grid (other spacing, other box, oblique axes) in its
    voxels: every target voxel must land on the same physical point as the flow sampled on the network grid
    (reference: ITK's index ↔ point maps and a hand-computed trilinear sample)."""
    fixed = make_image([31, 22, 13], [1.1, 0.8, 2.7], rotation(0.4, 0.1, -0.6), [5.0, -12.0, 30.0],
                       lambda p: p[..., 0])
    grid = network_grid(fixed, (16, 16, 16))
    target = refinement_grids(fixed, 1.3, 2)[-1]
    flow = smooth_flow(grid.GetSize(), amplitude=1.5)
    ours = flow_on_grid(flow, grid, target)
    assert ours.shape == (1, 3, *target.GetSize()) and ours.dtype == torch.float32
    f = flow[0].double().numpy()
    rng = np.random.default_rng(0)
    for index in zip(*(rng.integers(0, n, 40) for n in target.GetSize())):
        p = np.asarray(target.TransformIndexToPhysicalPoint([int(i) for i in index]))
        q = np.clip(grid.TransformPhysicalPointToContinuousIndex(p.tolist()), 0, np.subtract(grid.GetSize(), 1))
        u = trilinear(f, q)
        expected = np.asarray(grid.TransformContinuousIndexToPhysicalPoint((q + u).tolist()))
        moved = np.asarray(index, dtype=float) + ours[(0, slice(None), *index)].double().numpy()
        landed = np.asarray(target.TransformContinuousIndexToPhysicalPoint(moved.tolist()))
        # compare displacements (mm): q is clipped as the flow is clamped at the network grid's border
        np.testing.assert_allclose(landed - p, expected - np.asarray(grid.TransformContinuousIndexToPhysicalPoint(q.tolist())),
                                   atol=1e-4)


def test_grid_with_other_axes_is_refused():
    fixed = make_image([8, 8, 8], [1, 1, 1], np.eye(3), [0, 0, 0], lambda p: p[..., 0])
    grid = network_grid(fixed, (8, 8, 8))
    grid.SetDirection(rotation(0.3, 0, 0).ravel().tolist())
    with pytest.raises(ValueError, match="direction"):
        flow_to_displacement(torch.zeros(1, 3, 8, 8, 8), grid, fixed)


def test_jacobian_of_affine_physical_field_is_det_a():
    fixed = make_image([40, 12, 10], [0.9, 1.7, 2.2], rotation(0.5, -0.3, 0.2), [0, 0, 0], lambda p: p[..., 0])
    a = np.array([[1.1, 0.05, 0.0], [-0.02, 0.95, 0.1], [0.03, 0.0, 1.2]])
    points = voxel_centres(fixed)
    field = sitk.GetImageFromArray(points @ (a - np.eye(3)).T + np.array([1.0, -2.0, 0.5]), isVector=True)
    field.CopyInformation(fixed)
    detj = field_jacobian_determinant(field, slab=16)
    assert detj.shape == (40, 12, 10)
    np.testing.assert_allclose(detj, np.linalg.det(a), rtol=1e-4)


def test_displacement_transform_does_not_consume_the_field():
    fixed = make_image([5, 5, 5], [1, 1, 1], np.eye(3), [0, 0, 0], lambda p: p[..., 0])
    field = sitk.GetImageFromArray(np.ones((5, 5, 5, 3)), isVector=True)
    field.CopyInformation(fixed)
    transform = displacement_transform(field)
    assert field.GetSize() == (5, 5, 5)
    np.testing.assert_allclose(transform.TransformPoint((2.0, 2.0, 2.0)), (3.0, 3.0, 3.0))


def test_inverse_transform_matches_itk_inversion_on_an_oblique_grid():
    """The inverse of a compact field (oblique, anisotropic grid) against ITK's InvertDisplacementField on the
    same grid: the inverse displacements agree to 0.01 mm inside, and the round trip p → φ⁻¹(φ(p)) (which
    interpolates both fields between their grid points) is no worse than with ITK's inverse."""
    fixed = make_image([29, 23, 17], [1.1, 0.8, 2.7], rotation(0.4, 0.1, -0.6), [5.0, -12.0, 30.0], lambda p: p[..., 0])
    grid = network_grid(fixed, (20, 16, 12))
    field = compact_displacement(smooth_flow(grid.GetSize(), amplitude=1.5), grid)
    ours = inverse_transform(field)
    itk = sitk.InvertDisplacementField(field, maximumNumberOfIterations=200, maxErrorToleranceThreshold=1e-4,
                                       meanErrorToleranceThreshold=1e-6, enforceBoundaryCondition=False)
    itk.CopyInformation(field)
    reference = displacement_transform(itk)
    inside = [field.TransformIndexToPhysicalPoint([int(i) + 3 for i in index])  # 3 voxels from the border
              for index in np.ndindex(*(n - 6 for n in field.GetSize()))][::7]
    shift = [np.subtract(ours.TransformPoint(p), reference.TransformPoint(p)) for p in inside]
    assert np.abs(shift).max() < 0.01
    forward = displacement_transform(field)
    trips = [np.mean([np.linalg.norm(np.subtract(inverse.TransformPoint(forward.TransformPoint(p)), p)) for p in inside])
             for inverse in (ours, reference)]
    assert trips[0] < trips[1] + 0.002 and trips[0] < 0.1 and np.abs(sitk.GetArrayViewFromImage(field)).max() > 1.0
