"""Dense spatial transforms on the network grid: warping, exact composition, affine flows, Jacobians.

All fields here are *pull-back displacement fields in voxels of the tensor grid*: a flow ``u`` of shape
``(B, 3, X, Y, Z)`` maps the fixed-grid voxel ``p`` to the moving-image position ``p + u(p)``, and
channel ``i`` displaces tensor axis ``i`` (axes in ITK index order i, j, k). See docs/conventions.md.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "identity_grid",
    "centered_grid",
    "warp",
    "sample",
    "compose",
    "affine_flow",
    "apply_matrix",
    "jacobian_determinant",
    "integrate_velocity",
    "invert_flow",
    "mirror",
    "mirror_flow",
    "resize_flow",
]


def identity_grid(shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel index coordinates of a grid: ``(3, X, Y, Z)`` with ``grid[i, x, y, z]`` = index along axis i."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def centered_grid(shape: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates relative to the grid centre ``(n - 1) / 2`` on each axis: ``(3, X, Y, Z)``."""
    centre = torch.tensor([(n - 1) / 2.0 for n in shape], device=device, dtype=dtype)
    return identity_grid(shape, device=device, dtype=dtype) - centre.view(3, 1, 1, 1)


@functools.lru_cache(maxsize=8)
def _normalized_identity(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Identity grid in ``grid_sample``'s normalised coordinates: ``(1, X, Y, Z, 3)`` ordered (W, H, D).

    Built outside inference mode so the cached tensor may also serve autograd graphs."""
    with torch.inference_mode(False), torch.no_grad():
        axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in shape]
        return torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).unsqueeze(0)


def _sampling_grid(flow: torch.Tensor, region: Optional[tuple[slice, slice, slice]] = None,
                   shape: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Turn a voxel flow ``(B, 3, X, Y, Z)`` into the normalised ``grid_sample`` grid ``(B, X, Y, Z, 3)``.

    ``grid_sample`` wants (W, H, D) order, the tensor axes reversed, and coordinates scaled to [−1, 1].
    With ``region`` the flow holds only those voxels of a grid of ``shape`` (the sampled image's).
    """
    batch, _, *size = flow.shape
    shape = tuple(size if shape is None else shape)
    if min(shape) < 2:
        raise ValueError(f"warping needs at least 2 voxels along every axis, got grid {tuple(shape)}")
    scale = torch.tensor([2.0 / (n - 1) for n in reversed(shape)], device=flow.device, dtype=flow.dtype)
    base = _normalized_identity(shape, flow.device, flow.dtype)
    if region is not None:
        base = base[(slice(None), *region)]
    return torch.addcmul(base, flow.flip(1).permute(0, 2, 3, 4, 1), scale)


def _grid_sample(image: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """``grid_sample`` (border padding, corners aligned), split into slabs of the grid's rows.

    The 3D CPU kernel parallelises over the batch only, so a single volume is sampled as up to 8 slabs
    presented as a batch of the (expanded, not copied) input (measured ~1.5–2× faster on 2 cores). The slabs
    split the grid's (X, Y) rows, each row kept whole along Z, so a grid whose X is prime is split too (73×93×79:
    forward + backward 29 → 19 ms; splitting along X alone left it one slab).
    """
    batch, channels = image.shape[:2]
    size = grid.shape[1] * grid.shape[2]
    needs_grad = torch.is_grad_enabled() and image.requires_grad  # expand would multiply the input's grad buffer
    slabs = 8 if torch.get_num_threads() > 1 and image.device.type == "cpu" and batch == 1 and not needs_grad else 1
    while slabs > 1 and size % slabs:
        slabs -= 1
    if slabs == 1:
        return F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=True)
    slab_grid = grid.reshape(slabs, size // slabs, 1, *grid.shape[3:])
    out = F.grid_sample(image.expand(slabs, -1, -1, -1, -1), slab_grid, mode=mode, padding_mode="border",
                        align_corners=True)
    return out.transpose(0, 1).reshape(1, channels, *grid.shape[1:4])


def warp(image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear",
         region: Optional[tuple[slice, slice, slice]] = None) -> torch.Tensor:
    """Pull ``image`` back through ``flow``: ``out(p) = image(p + flow(p))``.

    image: ``(B, C, X, Y, Z)``; flow: ``(B, 3, X, Y, Z)`` in voxels (same grid), or with ``region`` (three
    slices of the image's grid, step 1) the flow of those voxels only, and the output on them. ``mode`` is
    ``"bilinear"`` (trilinear, for images and flows) or ``"nearest"`` (label maps). Positions outside
    the grid take the border value. Sampling is done in fp32 whatever the autocast state.
    """
    shape = tuple(image.shape[2:])
    expected = shape if region is None else tuple(len(range(*r.indices(n))) for r, n in zip(region, shape))
    if image.shape[0] != flow.shape[0] or tuple(flow.shape[2:]) != expected:
        raise ValueError(f"image {tuple(image.shape)} and flow {tuple(flow.shape)} are not on the same grid")
    with torch.autocast(device_type=flow.device.type, enabled=False):
        out = _grid_sample(image.float(), _sampling_grid(flow.float(), region, shape), mode)
    return out if image.is_floating_point() else out.round().to(image.dtype)


def sample(volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``volume`` ``(1, C, X, Y, Z)`` at voxel positions ``points`` ``(N, 3)`` (tensor
    axis order) → ``(C, N)``; positions outside the grid take the border value."""
    shape = volume.shape[2:]
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=points.device, dtype=points.dtype)
    grid = (points * scale - 1.0).flip(-1).view(1, -1, 1, 1, 3)
    return _grid_sample(volume, grid, "bilinear").view(volume.shape[1], -1)


def compose(previous: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Exact composition of pull-back fields: apply ``previous`` after ``flow``'s step.

    Returns ``u(p) = previous(p + flow(p)) + flow(p)``, i.e. the transform ``p ↦ φ_prev(p + flow(p))``.
    Shapes ``(B, 3, X, Y, Z)``.
    """
    return warp(previous, flow) + flow


def affine_flow(matrix: torch.Tensor, translation: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Dense flow of ``x ↦ A x + b`` on voxel coordinates centred on the grid: ``A x + b − x``.

    matrix: ``(B, 3, 3)``; translation: ``(B, 3)`` voxels; returns ``(B, 3, *shape)``.
    """
    x = centered_grid(shape, device=matrix.device, dtype=matrix.dtype).flatten(1)  # (3, N)
    moved = torch.einsum("bij,jn->bin", matrix, x) + translation.unsqueeze(-1)
    return (moved - x).view(matrix.shape[0], 3, *shape)


def apply_matrix(matrix: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Multiply every displacement vector of ``flow`` ``(B, 3, X, Y, Z)`` by ``matrix`` ``(B, 3, 3)``."""
    return torch.einsum("bij,bj...->bi...", matrix, flow)


def jacobian_determinant(flow: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of ``p ↦ p + flow(p)`` with central differences (one-sided at borders).

    flow: ``(B, 3, X, Y, Z)`` in voxels; returns ``(B, X, Y, Z)``. Values ≤ 0 mark folding.
    """
    # j[c][d] = δ_cd + ∂u_c/∂x_d, each (B, X, Y, Z); the 3×3 determinant is expanded in closed form
    # (several times faster than torch.linalg.det on millions of tiny matrices).
    grads = [torch.gradient(flow, dim=d)[0] for d in (2, 3, 4)]
    j = [[grads[d][:, c] + (1.0 if c == d else 0.0) for d in range(3)] for c in range(3)]
    return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
            + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))


def integrate_velocity(velocity: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
    """Displacement of the stationary velocity field's exponential, by scaling and squaring.

    velocity: ``(B, 3, X, Y, Z)`` in voxels; ``u = v / 2ˢ`` is composed with itself ``s`` times
    (``u ← compose(u, u)``). ``steps=None`` picks the smallest ``s`` (at least 2) with ``max |v| / 2ˢ``
    ≤ 1/8 voxel, so the first step's finite-difference Jacobian stays near the identity. For a smooth ``v`` the map ``p ↦ p + u(p)`` is then a diffeomorphism: det J > 0.
    """
    if steps is None:
        largest = float(velocity.detach().abs().max())
        steps = max(2, math.ceil(math.log2(max(largest, 1e-12) / 0.125)))
    flow = velocity / (2 ** steps)
    for _ in range(steps):
        flow = compose(flow, flow)
    return flow


def mirror(volume: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """``(B, C, X, Y, Z)`` mirrored along the spatial ``axes`` (0 = X, 1 = Y, 2 = Z): voxel ``x`` ↦ ``n − 1 − x``."""
    return torch.flip(volume, [2 + a for a in axes]) if axes else volume


def mirror_flow(flow: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """A flow ``(B, 3, X, Y, Z)`` (voxels) of the images mirrored along ``axes`` as the flow of the images
    themselves (and back: it is its own inverse): mirrored, with its components along ``axes`` negated."""
    if not axes:
        return flow
    sign = torch.ones(3, dtype=flow.dtype, device=flow.device)
    sign[list(axes)] = -1.0
    return mirror(flow, axes) * sign.view(1, 3, 1, 1, 1)


def invert_flow(flow: torch.Tensor, *, iterations: int = 30, tolerance: float = 1e-2) -> torch.Tensor:
    """The flow of the inverse map: ``w`` with ``p + w(p) = φ⁻¹(p)`` for ``φ(p) = p + flow(p)``.

    flow: ``(B, 3, X, Y, Z)`` in voxels. Damped fixed-point iteration from ``w = −flow``: the residual
    ``r = w + flow(p + w(p))`` (zero for the inverse) is removed by ¾ per step, ``w ← w − ¾ r`` (the undamped
    step oscillates where the map compresses strongly: on real CT pairs it needed 30 iterations for a worse
    inverse). Stops after ``iterations``, once no residual exceeds ``tolerance`` voxels, or once their mean is
    below ``tolerance`` / 100 (where the map is not invertible — a fold, a region mapped outside the grid —
    the largest residual never falls). Near the grid's border ``flow`` is read at the border.
    """
    inverse = -flow
    for _ in range(iterations):
        residual = inverse + warp(flow, inverse)
        inverse = inverse - 0.75 * residual
        size = residual.abs()
        if float(size.max()) < tolerance or float(size.mean()) < tolerance / 100:
            break
    return inverse


@functools.lru_cache(maxsize=32)
def _interpolation_rows(old: int, new: int, start: int, stop: int, device: torch.device,
                        dtype: torch.dtype) -> torch.Tensor:
    """Rows ``start:stop`` of the ``(new, old)`` matrix of linear interpolation between two point sets over one
    segment, first and last points aligned (``F.interpolate(..., align_corners=True)`` along one axis)."""
    with torch.inference_mode(False), torch.no_grad():
        position = torch.arange(start, stop, dtype=torch.float64) * ((old - 1) / max(new - 1, 1))
        low = position.floor().clamp(0, max(old - 2, 0))
        frac, low = position - low, low.long()
        rows = torch.zeros(stop - start, old, dtype=torch.float64)
        index = torch.arange(stop - start)
        rows[index, low] = 1.0 - frac
        if old > 1:
            rows[index, low + 1] += frac
        return rows.to(device=device, dtype=dtype)


def resize_flow(flow: torch.Tensor, shape: Sequence[int],
                region: Optional[tuple[slice, slice, slice]] = None) -> torch.Tensor:
    """A flow ``(B, 3, X, Y, Z)`` resampled (trilinear) onto another grid over the same box.

    Both grids have their first and last voxel centres at the same points (corners aligned), so
    values are also rescaled from voxels of the old grid to voxels of the new one along each axis.
    ``region`` (three slices of the new grid, step 1): only those voxels, by one small interpolation matrix
    product per axis — measured faster than interpolating the whole grid and cropping (upsampling a 46×55×46
    control grid to 77×97×83 voxels of 90×108×90, forward + backward: 12 vs 23 ms; at 1 mm 0.20 vs 0.41 s).
    """
    shape = tuple(int(n) for n in shape)
    scale = torch.tensor([(new - 1) / max(old - 1, 1) for new, old in zip(shape, flow.shape[2:])],
                         device=flow.device, dtype=flow.dtype)
    if region is None:
        if tuple(flow.shape[2:]) == shape:
            return flow
        return F.interpolate(flow, size=shape, mode="trilinear", align_corners=True) * scale.view(1, 3, 1, 1, 1)
    (x, y, z) = (_interpolation_rows(old, new, *r.indices(new)[:2], flow.device, flow.dtype)
                 for old, new, r in zip(flow.shape[2:], shape, region))
    out = torch.matmul(flow * scale.view(1, 3, 1, 1, 1), z.t())  # (B, 3, X', Y', z)
    out = torch.matmul(y, out)  # (B, 3, X', y, z)
    return torch.matmul(x, out.flatten(3)).view(*out.shape[:2], x.shape[0], *out.shape[3:])
