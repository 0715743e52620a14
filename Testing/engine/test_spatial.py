"""rcreg.spatial against independent references: SimpleITK resampling, numpy shifts and analytic fields."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from rcreg.spatial import affine_flow, compose, invert_flow, jacobian_determinant, mirror_flow, warp

SHAPE = (20, 24, 18)  # distinct sizes catch axis mix-ups


def smooth_field(rng: np.random.Generator, shape=SHAPE, amplitude=3.0, sigma=3.0) -> np.ndarray:
    """Random smooth displacement field ``(3, X, Y, Z)`` with max |component| = ``amplitude`` voxels."""
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(3)])
    return amplitude * field / np.abs(field).max()


def smooth_image(rng: np.random.Generator, shape=SHAPE, sigma=2.0) -> np.ndarray:
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma)


def t(array: np.ndarray) -> torch.Tensor:
    """numpy ``(C, X, Y, Z)`` or ``(X, Y, Z)`` → float32 tensor ``(1, C, X, Y, Z)``."""
    array = array if array.ndim == 4 else array[None]
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]


def inside_mask(field: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """Voxels whose sampling position ``p + u(p)`` stays ``margin`` voxels inside the grid."""
    grid = np.indices(field.shape[1:])
    pos = grid + field
    upper = np.array(field.shape[1:]).reshape(3, 1, 1, 1) - 1
    return np.all((pos >= margin) & (pos <= upper - margin), axis=0)


def sitk_warp(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Resample ``image`` (i, j, k) through the voxel field with SimpleITK (unit spacing, identity direction:
    the field in mm is the voxel field; sitk arrays are ordered (k, j, i), vector components (x, y, z))."""
    sitk_image = sitk.GetImageFromArray(image.transpose(2, 1, 0).astype(np.float64))
    displacement = sitk.GetImageFromArray(field.transpose(3, 2, 1, 0).astype(np.float64), isVector=True)
    transform = sitk.DisplacementFieldTransform(displacement)
    out = sitk.Resample(sitk_image, sitk_image, transform, sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def test_warp_matches_simpleitk_displacement_field(rng):
    image, field = smooth_image(rng), smooth_field(rng)
    ours = warp(t(image), t(field))[0, 0].numpy()
    ref = sitk_warp(image, field)
    mask = inside_mask(field)
    assert mask.mean() > 0.5
    np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-5 * np.abs(image).max())


def test_warp_batch_channels_and_grad_path_match_simpleitk(rng):
    """Batch of 2 with 2 channels, warped with autograd on (the un-split sampling path)."""
    images = np.stack([np.stack([smooth_image(rng) for _ in range(2)]) for _ in range(2)])
    fields = np.stack([smooth_field(rng) for _ in range(2)])
    image = torch.tensor(images, dtype=torch.float32, requires_grad=True)
    ours = warp(image, torch.tensor(fields, dtype=torch.float32)).detach().numpy()
    for b in range(2):
        mask = inside_mask(fields[b])
        for c in range(2):
            ref = sitk_warp(images[b, c], fields[b])
            np.testing.assert_allclose(ours[b, c][mask], ref[mask], atol=1e-5 * np.abs(images).max())


def test_warp_of_a_region_matches_simpleitk_on_that_region(rng):
    """A flow given on a sub-box of the image's grid samples the whole image (content outside the box too)."""
    image, field = smooth_image(rng), smooth_field(rng)
    region = (slice(3, 17), slice(0, 20), slice(5, 18))
    crop = (slice(None), *region)
    ours = warp(t(image), t(field[crop]), region=region)[0, 0].numpy()
    ref = sitk_warp(image, field)[region]
    mask = inside_mask(field)[region]
    assert ours.shape == ref.shape and mask.mean() > 0.5
    np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-5 * np.abs(image).max())
    with pytest.raises(ValueError, match="same grid"):
        warp(t(image), t(field), region=region)


def test_identity_flow_returns_input(rng):
    image = t(rng.standard_normal(SHAPE))
    # Tolerance: fp32 round-off of the normalised grid_sample coordinates (~1e-6 voxel).
    np.testing.assert_allclose(warp(image, torch.zeros(1, 3, *SHAPE)).numpy(), image.numpy(), atol=2e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_integer_shift_equals_shifted_array(rng, axis):
    image = rng.standard_normal(SHAPE)
    shift = 3
    field = np.zeros((3, *SHAPE))
    field[axis] = shift
    ours = warp(t(image), t(field))[0, 0].numpy()
    # out(p) = image(p + shift) for every p whose p + shift is inside the grid.
    keep = [slice(None)] * 3
    keep[axis] = slice(0, SHAPE[axis] - shift)
    src = [slice(None)] * 3
    src[axis] = slice(shift, None)
    np.testing.assert_allclose(ours[tuple(keep)], image[tuple(src)], atol=1e-5)


def test_nearest_mode_keeps_label_values(rng):
    values = np.array([0, 3, 7])
    labels = values[rng.integers(0, 3, SHAPE)]
    field = smooth_field(rng, amplitude=2.5)
    out = warp(torch.from_numpy(labels)[None, None], t(field), mode="nearest")
    assert out.dtype == torch.int64
    assert set(np.unique(out.numpy())) <= set(values)
    # Where the sampling position is (near) a voxel centre, nearest must return that voxel's label.
    pos = np.indices(SHAPE) + field
    rounded = np.rint(pos).astype(int)
    exact = np.all(np.abs(pos - rounded) < 0.4, axis=0) & inside_mask(field, 0.5)
    assert exact.sum() > 50
    expected = labels[tuple(r[exact] for r in rounded)]
    np.testing.assert_array_equal(out[0, 0].numpy()[exact], expected)


def test_compose_constant_translations_sum():
    a = torch.tensor([1.5, -2.0, 0.5]).view(1, 3, 1, 1, 1).expand(1, 3, *SHAPE).contiguous()
    b = torch.tensor([-0.25, 3.0, 1.0]).view(1, 3, 1, 1, 1).expand(1, 3, *SHAPE).contiguous()
    np.testing.assert_allclose(compose(a, b).numpy(), (a + b).numpy(), atol=1e-5)


def test_compose_order_matches_sequential_warps(rng):
    """warp(m, compose(u, f)) = warp(warp(m, u), f): f is applied first in fixed space (conventions.md)."""
    shape = (28, 32, 26)
    image = t(smooth_image(rng, shape, sigma=3.0))
    u, f = (t(smooth_field(rng, shape, amplitude=5.0, sigma=2.0)) for _ in range(2))
    composed = compose(u, f)
    once = warp(image, composed)[0, 0].numpy()
    right = warp(warp(image, u), f)[0, 0].numpy()
    wrong = warp(warp(image, f), u)[0, 0].numpy()
    # Only where no sampling position leaves the grid (the border clamp would differ between the paths).
    mask = inside_mask(composed[0].numpy()) & inside_mask(f[0].numpy())
    assert mask.mean() > 0.3
    scale = np.abs(image.numpy()).mean()
    err_right = np.abs(once - right)[mask].mean() / scale
    err_wrong = np.abs(once - wrong)[mask].mean() / scale
    # Measured: right ≈ 1.5 % (the two-step path interpolates twice), wrong order ≈ 10 %.
    assert err_right < 0.03
    assert err_right < 0.25 * err_wrong


def test_affine_flow_matches_numpy(rng):
    matrix = np.eye(3) + 0.1 * rng.standard_normal((3, 3))
    translation = rng.standard_normal(3) * 2
    ours = affine_flow(torch.tensor(matrix[None]), torch.tensor(translation[None]), SHAPE)[0].numpy()
    centre = (np.array(SHAPE) - 1) / 2.0
    x = np.indices(SHAPE).reshape(3, -1) - centre[:, None]
    expected = (matrix @ x + translation[:, None] - x).reshape(3, *SHAPE)
    np.testing.assert_allclose(ours, expected, atol=1e-10)


def test_jacobian_of_uniform_scaling_is_cubed():
    s = 1.3
    x = np.indices(SHAPE).astype(float)
    det = jacobian_determinant(torch.tensor((s - 1.0) * x)[None])[0].numpy()
    np.testing.assert_allclose(det[1:-1, 1:-1, 1:-1], s ** 3, rtol=1e-10)


def test_jacobian_negative_for_folded_field():
    """u₀ = −2·x₀ maps x₀ ↦ −x₀ (a mirror): det J = −1 everywhere."""
    field = np.zeros((3, *SHAPE))
    field[0] = -2.0 * np.indices(SHAPE)[0]
    det = jacobian_determinant(torch.tensor(field)[None])[0].numpy()
    np.testing.assert_allclose(det, -1.0, rtol=1e-10)


def test_jacobian_matches_numpy_finite_differences_and_analytic():
    x, y, z = np.indices(SHAPE).astype(float)
    w = 2 * np.pi / 16
    field = np.stack([0.8 * np.sin(w * y) + 0.3 * np.cos(w * x),
                      0.5 * np.sin(w * z) * np.cos(w * x),
                      0.6 * np.cos(w * y) + 0.2 * np.sin(w * z)])
    det = jacobian_determinant(torch.tensor(field)[None])[0].numpy()
    # numpy central differences (one-sided at the borders), same discretisation.
    grads = np.stack([np.stack(np.gradient(field[c])) for c in range(3)])  # [component, derivative, ...]
    jac = np.moveaxis(grads, (0, 1), (-2, -1)) + np.eye(3)
    np.testing.assert_allclose(det, np.linalg.det(jac), atol=1e-10)
    # Analytic derivatives: central differences are second-order accurate in the interior.
    analytic = np.zeros((3, 3, *SHAPE))
    analytic[0, 0] = -0.3 * w * np.sin(w * x)
    analytic[0, 1] = 0.8 * w * np.cos(w * y)
    analytic[1, 0] = -0.5 * w * np.sin(w * z) * np.sin(w * x)
    analytic[1, 2] = 0.5 * w * np.cos(w * z) * np.cos(w * x)
    analytic[2, 1] = -0.6 * w * np.sin(w * y)
    analytic[2, 2] = 0.2 * w * np.cos(w * z)
    exact = np.linalg.det(np.moveaxis(analytic, (0, 1), (-2, -1)) + np.eye(3))
    inner = (slice(1, -1),) * 3
    np.testing.assert_allclose(det[inner], exact[inner], atol=0.02)


def test_invert_flow_of_an_affine_map_is_the_inverse_matrix(rng):
    """x ↦ A x + b (centred voxel coordinates) has the analytic inverse x ↦ A⁻¹ (x − b); away from the border,
    where the inverse's positions stay inside the grid, the fixed-point inverse matches it."""
    matrix = np.eye(3) + 0.08 * rng.standard_normal((3, 3))
    translation = rng.uniform(-1.5, 1.5, 3)
    flow = affine_flow(torch.tensor(matrix[None]), torch.tensor(translation[None]), SHAPE).float()
    inverse = np.linalg.inv(matrix)
    expected = affine_flow(torch.tensor(inverse[None]), torch.tensor((-inverse @ translation)[None]), SHAPE)[0].numpy()
    ours = invert_flow(flow, tolerance=1e-5)[0].numpy()
    inside = inside_mask(expected, margin=0.0) & inside_mask(flow[0].numpy(), margin=0.0)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours[:, inside], expected[:, inside], atol=2e-3)


def test_invert_flow_of_a_smooth_field_is_undone_by_it_on_an_independent_resampler(rng):
    """p + w(p) + u(p + w(p)) = p for the inverse w of a smooth random u, with u sampled by SimpleITK."""
    field = smooth_field(rng, amplitude=2.0, sigma=4.0)
    inverse = invert_flow(t(field), tolerance=1e-5)[0].numpy()
    u_at_inverse = np.stack([sitk_warp(field[c], inverse) for c in range(3)])  # u(p + w(p))
    inside = inside_mask(inverse, margin=1.0)
    residual = np.abs(inverse + u_at_inverse)[:, inside]
    assert residual.max() < 0.02 and np.abs(field).max() > 1.5


def test_mirror_flow_is_the_flow_of_the_mirrored_pair():
    """Independent warper (scipy): a moving image warped by a smooth random flow u, both mirrored along an axis
    set, are related by mirror_flow(u) — and mirroring twice gives u back."""
    rng = np.random.default_rng(3)
    shape = (14, 12, 10)
    moving = ndimage.gaussian_filter(rng.random(shape), 1.5)
    flow = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), 3.0) * 20 for _ in range(3)])
    identity = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    warp = lambda image, u: ndimage.map_coordinates(image, identity + u, order=1, mode="nearest")
    fixed = warp(moving, flow)
    for axes in [(0,), (1, 2), (0, 1, 2)]:
        mirrored = mirror_flow(torch.from_numpy(flow)[None], axes)[0].numpy()
        mirror_np = lambda a: np.flip(a, axes).copy()
        np.testing.assert_allclose(warp(mirror_np(moving), mirrored), mirror_np(fixed), atol=1e-9)
        torch.testing.assert_close(mirror_flow(mirror_flow(torch.from_numpy(flow)[None], axes), axes)[0],
                                   torch.from_numpy(flow))
