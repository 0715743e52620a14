"""The tensor functions behind test-time refinement: box filters, mutual information, flow resizing,
velocity integration and the optimiser loop, against independent references (avg_pool3d, analytic
fields) and known properties (mutual information of independent, identical and inverted samples)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rcreg.losses import box_mean, local_ncc_loss, mutual_information_loss
from rcreg.refinement import Cancelled, RefineOptions, _Level, refine, regularization_loss
from rcreg.spatial import identity_grid, integrate_velocity, jacobian_determinant, resize_flow, warp


@pytest.mark.parametrize("window", [1, 3, 5, 9, 13])
def test_box_mean_equals_avg_pool_with_truncated_windows(window):
    x = torch.rand(2, 3, 15, 14, 17, dtype=torch.float64)
    reference = F.avg_pool3d(x, window, stride=1, padding=window // 2, count_include_pad=False)
    torch.testing.assert_close(box_mean(x, window), reference)


def test_box_mean_gradient_is_exact():
    x = torch.rand(1, 2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: box_mean(t, 3), (x,))


def test_mutual_information_prefers_the_aligned_pair_and_ignores_inversion(rng):
    a = torch.tensor(rng.uniform(0, 1, 20000), dtype=torch.float32)
    shuffled = a[torch.randperm(len(a))]
    aligned, inverted, unrelated = (mutual_information_loss(a, b) for b in (a, 1 - a, shuffled))
    assert aligned < unrelated - 1.0 and abs(float(aligned - inverted)) < 1e-3
    # Two independent samples share no information: their MI (the loss is −MI) is close to zero.
    assert abs(float(unrelated)) < 0.05


def test_resize_flow_is_exact_for_linear_fields():
    """A linear field in voxels of one grid, resized to another over the same box, equals the same physical
    linear field expressed in voxels of the new grid (corners aligned)."""
    old, new = (9, 7, 5), (17, 13, 9)
    matrix = torch.tensor([[0.1, -0.05, 0.02], [0.03, 0.08, -0.04], [0.0, 0.06, -0.1]])
    def linear(shape):  # displacement in units of the box (0…1 along each axis), then in voxels
        unit = identity_grid(shape) / torch.tensor([n - 1 for n in shape]).view(3, 1, 1, 1)
        return torch.einsum("ij,j...->i...", matrix, unit) * torch.tensor([n - 1 for n in shape]).view(3, 1, 1, 1)
    torch.testing.assert_close(resize_flow(linear(old)[None], new), linear(new)[None], atol=1e-5, rtol=0)


@pytest.mark.parametrize("old, new, region", [
    ((6, 7, 5), (17, 13, 9), (slice(2, 15), slice(0, 13), slice(4, 5))),  # upsampling a sub-box
    ((17, 13, 9), (6, 7, 5), (slice(1, 6), slice(3, 7), slice(0, 5))),  # downsampling
])
def test_resize_flow_of_a_region_is_that_region_of_trilinear_interpolation(old, new, region):
    flow = torch.rand(1, 3, *old, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([(n - 1) / (o - 1) for n, o in zip(new, old)], dtype=torch.float64).view(1, 3, 1, 1, 1)
    reference = (F.interpolate(flow, size=new, mode="trilinear", align_corners=True) * scale)[(..., *region)]
    torch.testing.assert_close(resize_flow(flow, new, region), reference)
    weights = torch.rand_like(reference)
    torch.testing.assert_close(torch.autograd.grad((resize_flow(flow, new, region) * weights).sum(), flow)[0],
                               torch.autograd.grad((reference * weights).sum(), flow)[0])


def test_integrate_velocity_of_a_constant_is_that_translation_and_of_a_rotation_stays_invertible():
    constant = torch.zeros(1, 3, 8, 8, 8)
    constant[:, 0], constant[:, 2] = 1.5, -0.75
    torch.testing.assert_close(integrate_velocity(constant), constant, atol=1e-5, rtol=0)
    # A rotation generator about the grid centre: exp gives a rotation, det J ≈ 1 everywhere (no folding).
    x = identity_grid((16, 16, 16)) - 7.5
    velocity = torch.stack([-x[1], x[0], torch.zeros_like(x[0])])[None] * 0.3  # ~17° rotation
    detj = jacobian_determinant(integrate_velocity(velocity))[0, 2:-2, 2:-2, 2:-2]
    assert detj.min() > 0.9 and detj.max() < 1.1


def test_regularization_is_zero_for_translations_and_bending_for_linear_fields():
    translation = torch.ones(1, 3, 6, 6, 6)
    assert regularization_loss(translation, "diffusion") == 0 and regularization_loss(translation, "bending") == 0
    linear = identity_grid((6, 6, 6))[None] * 0.5
    assert regularization_loss(linear, "diffusion") > 0 and float(regularization_loss(linear, "bending")) == 0


def _pyramid(volume: torch.Tensor, shapes) -> list[torch.Tensor]:
    return [F.interpolate(volume, size=s, mode="trilinear", align_corners=True) for s in shapes]


def test_zero_iterations_return_the_initial_flow_unchanged():
    shapes = [(9, 9, 9), (17, 17, 17)]
    image = torch.rand(1, 1, 17, 17, 17)
    initial = torch.randn(1, 3, 17, 17, 17)
    result = refine(_pyramid(image, shapes), _pyramid(image, shapes), initial, RefineOptions(iterations=0, levels=2))
    # The result lives on the finest control grid (9³ for a 17³ level, 2 voxels apart): the initial flow as
    # that grid samples it, i.e. every second voxel, in units of that grid.
    torch.testing.assert_close(result.flow, initial[:, :, ::2, ::2, ::2] * 0.5, rtol=0, atol=1e-6)
    assert not result.levels


def test_refinement_recovers_a_translation_on_the_tensor_grid():
    """moving(p) = fixed(p − t): warped(p) = moving(p + u(p)) equals fixed(p) for the pull-back field u = t."""
    shapes = [(12, 12, 12), (24, 24, 24)]
    x = identity_grid((24, 24, 24))
    fixed = torch.sin(x[0] / 2.0) * torch.cos(x[1] / 3.0) + torch.sin(x[2] / 2.5)
    moving = torch.sin((x[0] - 1.5) / 2.0) * torch.cos(x[1] / 3.0) + torch.sin(x[2] / 2.5)
    fixed, moving = (((v - v.min()) / (v.max() - v.min()))[None, None] for v in (fixed, moving))
    result = refine(_pyramid(fixed, shapes), _pyramid(moving, shapes), torch.zeros(1, 3, 24, 24, 24),
                    RefineOptions(iterations=20, levels=2))
    inside = resize_flow(result.flow, (24, 24, 24))[0, :, 6:-6, 6:-6, 6:-6]
    assert abs(float(inside[0].mean()) - 1.5) < 0.15 and float(inside[1:].abs().mean()) < 0.15


def test_a_levels_similarity_before_is_that_of_the_initial_field():
    """The initial field is applied (on the control grid) before any step: with the true translation as the
    initial flow the pair starts aligned inside the mask (local NCC ≈ 1), from zero it does not."""
    x = identity_grid((24, 24, 24))
    fixed = torch.sin(x[0] / 2.0) * torch.cos(x[1] / 3.0) + torch.sin(x[2] / 2.5)
    moving = torch.sin((x[0] - 1.5) / 2.0) * torch.cos(x[1] / 3.0) + torch.sin(x[2] / 2.5)
    fixed, moving = (((v - v.min()) / (v.max() - v.min()))[None, None] for v in (fixed, moving))
    mask = torch.zeros(1, 1, 24, 24, 24)
    mask[..., 5:-5, 5:-5, 5:-5] = 1.0  # away from the borders the shifted sampling would leave
    translation = torch.zeros(1, 3, 24, 24, 24)
    translation[:, 0] = 1.5
    before = {name: refine([fixed], [moving], initial, RefineOptions(iterations=1, levels=1),
                           masks=[mask]).levels[0]["similarity_before"]
              for name, initial in (("aligned", translation), ("zero", torch.zeros_like(translation)))}
    assert before["aligned"] < 0.01 < 0.05 < before["zero"]


@pytest.mark.parametrize("masked", [False, True])
def test_a_levels_local_ncc_on_the_informative_box_equals_that_on_the_whole_grid(masked):
    """The level scores local NCC only on the box around the fixed image's non-flat voxels: the loss and its
    gradient equal local NCC of the whole warped grid (rcreg.losses, no box), and the box is smaller."""
    shape = (32, 28, 30)
    x = identity_grid(shape)
    inside = ((x[0] - 15).square() / 64 + (x[1] - 13).square() / 36 + (x[2] - 14).square() / 49 < 1).float()
    fixed = (inside * (0.5 + 0.3 * torch.sin(x[0] / 2.0) * torch.cos(x[1] / 1.7)))[None, None]
    moving = (inside * (0.5 + 0.3 * torch.sin((x[0] - 1.2) / 2.0) * torch.cos(x[1] / 1.7)))[None, None]
    moving = torch.roll(moving, shifts=(2, -1, 1), dims=(2, 3, 4))  # content the box must pull in from outside
    mask = None
    if masked:
        mask = torch.zeros(1, 1, *shape)
        mask[..., 2:30, 9:26, 1:27] = 1.0  # beyond the object too: its flat voxels still count in the mean
    options = RefineOptions(ncc_window=5)
    control = torch.rand(1, 3, 9, 8, 9) * 4 - 2
    level = _Level(fixed, moving, mask, options, torch.Generator())
    assert math.prod(r.stop - r.start for r in level.region) < 0.6 * math.prod(shape)
    params = control.clone().requires_grad_(True)
    ours = level.loss(params)
    reference_params = control.clone().requires_grad_(True)
    reference = local_ncc_loss(fixed, warp(moving, resize_flow(reference_params, shape)), 5, weights=mask)
    torch.testing.assert_close(ours, reference)
    ours.backward()
    reference.backward()
    torch.testing.assert_close(params.grad, reference_params.grad)
    assert float(params.grad.abs().max()) > 0


def test_cancel_raises():
    shapes = [(8, 8, 8)]
    image = torch.rand(1, 1, 8, 8, 8)
    with pytest.raises(Cancelled):
        refine(_pyramid(image, shapes), _pyramid(image, shapes), torch.zeros(1, 3, 8, 8, 8),
               RefineOptions(iterations=5, levels=1), cancel=lambda: True)


@pytest.mark.parametrize("bad, message", [
    ({"iterations": -1}, "iterations"), ({"similarity": "nmi"}, "similarity"), ({"ncc_window": 4}, "window"),
    ({"levels": 0}, "levels"), ({"weight": -1.0}, "weight"), ({"regularization": "tv"}, "regularization"),
])
def test_bad_options_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        RefineOptions(**bad)
