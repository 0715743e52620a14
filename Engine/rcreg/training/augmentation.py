"""Random spatial and intensity augmentation of registration pairs on the network grid.

Spatial fields are pull-back voxel flows ``(B, 3, X, Y, Z)`` (docs/conventions.md); a deformed image
is resampled once through the composition of a random affine map and a random smooth free-form
deformation (a cubic B-spline control grid, as in the paper's 5×5×5 augmentation). All randomness is
drawn from an explicit :class:`torch.Generator` (on the CPU) so a training step is reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..spatial import affine_flow, apply_matrix, warp

__all__ = [
    "bspline_basis",
    "bspline_field",
    "random_smooth_field",
    "random_affine",
    "AugmentationSettings",
    "random_spatial_flow",
    "augment_spatial",
    "deform",
    "augment_intensity",
    "random_contrast",
]

#: Knots of the random intensity lookup table of :func:`random_contrast`, evenly spaced on [0, 1].
CONTRAST_KNOTS = 8


def _cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    """The centred cubic B-spline kernel β³(t), supported on |t| < 2."""
    a = t.abs()
    inner = 2.0 / 3.0 - a.square() + 0.5 * a.pow(3)
    outer = (2.0 - a).clamp_min(0.0).pow(3) / 6.0
    return torch.where(a < 1.0, inner, outer)


def bspline_basis(size: int, control_points: int, *, dtype=torch.float64) -> torch.Tensor:
    """Weights ``(size, control_points)`` of control points spread evenly from voxel 0 to ``size − 1``.

    Control point j sits at ``t_j = j·h`` with ``h = (size − 1)/(control_points − 1)``; voxel x gets
    weight ``β³((x − t_j)/h)``. Rows sum to 1 inside the grid and to 5/6 at its two ends.
    """
    if control_points < 2:
        raise ValueError(f"a control grid needs at least 2 points per axis, got {control_points}")
    if size < 2:
        raise ValueError(f"a grid axis needs at least 2 voxels, got {size}")
    h = (size - 1) / (control_points - 1)
    x = torch.arange(size, dtype=dtype).unsqueeze(1)
    t = torch.arange(control_points, dtype=dtype).unsqueeze(0) * h
    return _cubic_bspline((x - t) / h)


def bspline_field(coefficients: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Evaluate a cubic B-spline control grid on a dense grid.

    coefficients: ``(B, C, m₁, m₂, m₃)`` control values; returns ``(B, C, *shape)`` with
    ``out[..., x, y, z] = Σ_abc W₁[x, a] W₂[y, b] W₃[z, c] coefficients[..., a, b, c]``
    (W from :func:`bspline_basis`), contracted one axis at a time.
    """
    if coefficients.dim() != 5 or len(shape) != 3:
        raise ValueError(f"need coefficients (B, C, m1, m2, m3) and a 3-D shape, got {tuple(coefficients.shape)}, {shape}")
    w1, w2, w3 = [bspline_basis(n, m, dtype=coefficients.dtype).to(coefficients.device)
                  for n, m in zip(shape, coefficients.shape[2:])]
    batch, channels, m1 = coefficients.shape[:3]
    out = w2 @ (coefficients @ w3.T)  # (B, C, m1, Y, Z)
    out = w1 @ out.reshape(batch, channels, m1, -1)  # (B, C, X, Y·Z): one GEMM over the largest axis
    return out.view(batch, channels, *shape)


def _control_displacements(batch: int, control_points: int, amplitude: float,
                           generator: Optional[torch.Generator]) -> torch.Tensor:
    """Control-point displacements ``(batch, 3, m, m, m)`` uniform in ±``amplitude`` voxels (fp32)."""
    if amplitude < 0:
        raise ValueError(f"amplitude must be ≥ 0 voxels, got {amplitude}")
    coeffs = torch.rand(batch, 3, control_points, control_points, control_points,
                        generator=generator, dtype=torch.float64)
    return ((2.0 * coeffs - 1.0) * amplitude).float()


def random_smooth_field(
    shape: Sequence[int],
    control_points: int = 5,
    amplitude: float = 4.0,
    generator: Optional[torch.Generator] = None,
    *,
    batch: int = 1,
    device=None,
) -> torch.Tensor:
    """Random smooth free-form deformation: a ``(batch, 3, *shape)`` voxel flow (fp32).

    Each control point of a ``control_points³`` cubic B-spline grid gets a displacement drawn uniformly
    from ``[−amplitude, amplitude]`` voxels per axis, so no voxel moves more than ``amplitude``.
    Random numbers come from ``generator`` (a CPU generator; ``None`` = torch's global one).
    """
    coeffs = _control_displacements(batch, control_points, amplitude, generator)
    return bspline_field(coeffs.to(device), list(shape))


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(B, 3, 3)`` from angles ``(B, 3)`` (radians) about axes 0, 1, 2, applied in that order."""
    mats = []
    for axis in range(3):
        c, s = torch.cos(angles[:, axis]), torch.sin(angles[:, axis])
        i, j = [a for a in range(3) if a != axis]
        m = torch.eye(3, dtype=angles.dtype).repeat(angles.shape[0], 1, 1)
        m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = c, -s, s, c
        mats.append(m)
    return mats[2] @ mats[1] @ mats[0]


def random_affine(
    batch: int,
    rotation: float = 10.0,
    scaling: float = 0.1,
    translation: float = 4.0,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random maps ``x ↦ A x + b`` on grid-centred voxel coordinates: ``(A (B, 3, 3), b (B, 3))``.

    Angles uniform in ±``rotation`` degrees about each axis, per-axis scale factors log-uniform in
    ``[1/(1 + scaling), 1 + scaling]``, translation uniform in ±``translation`` voxels.
    """
    u = torch.rand(batch, 9, generator=generator, dtype=torch.float64) * 2.0 - 1.0
    angles = u[:, :3] * math.radians(rotation)
    scales = torch.exp(u[:, 3:6] * math.log1p(scaling))
    matrix = _rotation(angles) @ torch.diag_embed(scales)
    return matrix.float(), (u[:, 6:] * translation).float()


@dataclass
class AugmentationSettings:
    """Strengths of the random augmentation (0 switches a component off)."""

    ffd_amplitude: float = 4.0  # voxels: largest displacement of the free-form deformation
    ffd_control_points: int = 5  # control points per axis of the B-spline grid
    rotation: float = 10.0  # degrees about each axis
    scaling: float = 0.1  # per-axis scale factors within [1/(1+s), 1+s]
    translation: float = 4.0  # voxels
    contrast: float = 0.0  # share of pairs given one shared random intensity lookup table
    gamma: float = 0.3  # intensity ** exp(U(−g, g))
    bias_field: float = 0.3  # multiplicative exp(smooth field within ±b)
    noise: float = 0.02  # Gaussian noise, standard deviation U(0, noise)

    @property
    def spatial(self) -> bool:
        return any(v > 0 for v in (self.ffd_amplitude, self.rotation, self.scaling, self.translation))


def random_spatial_flow(
    shape: Sequence[int],
    settings: AugmentationSettings,
    generator: Optional[torch.Generator] = None,
    *,
    batch: int = 1,
    device=None,
) -> torch.Tensor:
    """Random pull-back flow ``(batch, 3, *shape)`` (voxels, fp32) of a random affine map after a smooth field.

    ``u(p) = A(p + f(p)) + b − p`` on centred coordinates: the B-spline field f (:func:`bspline_field`,
    control displacements uniform in ±``settings.ffd_amplitude``) followed by :func:`random_affine`, so an
    image is resampled once. Zero when ``settings.spatial`` is off (no random numbers drawn).
    """
    if not settings.spatial:
        return torch.zeros(batch, 3, *shape, device=device)
    matrix, shift = random_affine(batch, settings.rotation, settings.scaling, settings.translation, generator)
    coeffs = _control_displacements(batch, settings.ffd_control_points, settings.ffd_amplitude, generator)
    matrix, shift = matrix.to(device), shift.to(device)
    # A·f(p) is the B-spline of the control displacements multiplied by A (interpolation is linear).
    return affine_flow(matrix, shift, shape) + bspline_field(apply_matrix(matrix, coeffs.to(device)), shape)


def augment_spatial(
    image: torch.Tensor,
    labels: Optional[torch.Tensor],
    settings: AugmentationSettings,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Deform images ``(B, 1, X, Y, Z)`` (and their integer label maps, nearest neighbour) by a
    :func:`random_spatial_flow`; returned unchanged when ``settings.spatial`` is off.

    Used for the moving image (the paper's augmentation) and, with the training option ``augment_fixed``,
    independently for the fixed image too.
    """
    if not settings.spatial:
        return image, labels
    flow = random_spatial_flow(image.shape[2:], settings, generator, batch=image.shape[0], device=image.device)
    return deform(image, labels, flow)


def deform(image: torch.Tensor, labels: Optional[torch.Tensor],
           flow: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Images ``(B, C, X, Y, Z)`` warped (trilinear) and integer label maps (nearest) through ``flow``."""
    return warp(image, flow), (warp(labels, flow, mode="nearest") if labels is not None else None)


def augment_intensity(
    image: torch.Tensor, settings: AugmentationSettings, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Random gamma, smooth multiplicative bias field and Gaussian noise on images ``(B, 1, X, Y, Z)`` in [0, 1].

    The result is clipped to [0, 1].
    """
    batch, channels, *shape = image.shape
    device = image.device
    out = image
    if settings.gamma > 0:
        gamma = torch.exp((torch.rand(batch, generator=generator) * 2 - 1) * settings.gamma)
        out = out.clamp_min(0.0).pow(gamma.to(device).view(batch, 1, 1, 1, 1))
    if settings.bias_field > 0:
        coeffs = (torch.rand(batch, 1, 3, 3, 3, generator=generator, dtype=torch.float64) * 2 - 1) * settings.bias_field
        out = out * torch.exp(bspline_field(coeffs.to(device=device, dtype=out.dtype), shape))
    if settings.noise > 0:
        sigma = torch.rand(batch, generator=generator) * settings.noise
        noise = torch.randn(batch, channels, *shape, generator=generator) * sigma.view(batch, 1, 1, 1, 1)
        out = out + noise.to(device=device, dtype=out.dtype)
    return out.clamp(0.0, 1.0)


def random_contrast(
    fixed: torch.Tensor, moving: torch.Tensor, share: float, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Give a share of the pairs a new contrast: the same random lookup table on both images ``(B, 1, X, Y, Z)`` in [0, 1].

    The table is piecewise linear through :data:`CONTRAST_KNOTS` evenly spaced knots; the first knot
    stays at 0 (background stays dark) and the others are uniform in [0, 1], so the mapping need not be
    monotone (a T1 pair may come out T2- or PD-like). Both images of a pair get one table, so their
    similarity keeps its meaning (SynthMorph randomises contrast to make one model work across contrasts).
    The random numbers are drawn whatever ``share`` is, so a step's other draws do not depend on it.
    """
    batch = fixed.shape[0]
    chosen = torch.rand(batch, generator=generator) < share
    values = torch.cat([torch.zeros(batch, 1), torch.rand(batch, CONTRAST_KNOTS - 1, generator=generator)], dim=1)
    if not bool(chosen.any()):
        return fixed, moving
    values = values.to(device=fixed.device, dtype=fixed.dtype)

    def lookup(image: torch.Tensor) -> torch.Tensor:
        position = image.clamp(0.0, 1.0).flatten(1) * (CONTRAST_KNOTS - 1)
        lower = position.floor().clamp_max(CONTRAST_KNOTS - 2)
        t = position - lower
        low = torch.gather(values, 1, lower.long())
        high = torch.gather(values, 1, lower.long() + 1)
        return (low + t * (high - low)).view_as(image)

    keep = chosen.to(fixed.device).view(-1, 1, 1, 1, 1)
    return torch.where(keep, lookup(fixed), fixed), torch.where(keep, lookup(moving), moving)
