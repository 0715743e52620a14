"""Network flows (voxels of the network grid) ↔ dense physical displacement fields (LPS mm) and ITK transforms.

See docs/conventions.md for the directions and units. A physical field here is a SimpleITK vector
image of float64 with the fixed image's origin, spacing and direction, holding pull-back
displacements ``u(p)`` in mm: the fixed point ``p`` maps to the moving point ``p + u(p)``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from .io import image_from_ijk
from .spatial import invert_flow, jacobian_determinant, sample

__all__ = [
    "flow_to_displacement",
    "flow_on_grid",
    "displacement_transform",
    "displacement_to_voxel_flow",
    "field_jacobian_determinant",
    "compact_displacement",
    "dense_displacement",
    "registration_transform",
    "inverse_transform",
    "round_trip_error",
    "translated_field",
]


def _index_matrix(image: sitk.Image) -> np.ndarray:
    """``D · diag(s)``: continuous index → physical offset (3×3)."""
    return np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())


def _linear_weights(q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1D linear interpolation at continuous positions ``q`` on ``n`` samples, clamped to the border.

    Returns ``(i0, i0 + 1, w)`` so that ``value = x[i0] + w·(x[i0 + 1] − x[i0])``.
    """
    q = np.clip(q, 0, n - 1)
    i0 = np.minimum(np.floor(q).astype(np.intp), n - 2)
    return i0, i0 + 1, q - i0


def _interpolate_axis(x: np.ndarray, axis: int, weights, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Linear interpolation of ``x`` along ``axis`` (leading axes only; trailing axes stay contiguous)."""
    i0, i1, w = weights
    w = w.reshape((-1,) + (1,) * (x.ndim - axis - 1))
    index = (slice(None),) * axis
    low = x[index + (i0,)]
    result = np.subtract(x[index + (i1,)], low, out=out)
    result *= w
    result += low
    return result


def _to_mm(flow: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Voxel displacements ``(3, I, J, K)`` times ``matrix`` (``D·diag(s)``) → mm ``(I, J, K, 3)`` (one BLAS
    product; ``np.tensordot`` copies the operands first and takes 3× as long)."""
    return (matrix @ flow.reshape(3, -1)).T.reshape(*flow.shape[1:], 3)


def _index_map(grid: sitk.Image, target: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, offset)`` with ``scale * index + offset`` the continuous index in ``grid`` of the ``target``
    voxel ``index`` (per axis: ``grid`` must share ``target``'s axes)."""
    to_grid = np.linalg.inv(_index_matrix(grid))
    index_map = to_grid @ _index_matrix(target)  # target index → grid index (linear part)
    if np.abs(index_map - np.diag(np.diag(index_map))).max() > 1e-6 * np.abs(index_map).max():
        raise ValueError("the network grid must share the fixed image's axes (direction)")
    return np.diag(index_map).copy(), to_grid @ (np.asarray(target.GetOrigin()) - np.asarray(grid.GetOrigin()))


def flow_on_grid(flow: torch.Tensor, grid: sitk.Image, target: sitk.Image) -> torch.Tensor:
    """A pull-back flow in voxels of ``grid`` resampled onto ``target`` (a grid sharing its axes), in voxels of
    ``target``: ``(1, 3, *target size)`` float32 on ``flow``'s device, trilinear, clamped at ``grid``'s border.

    The same map as :func:`flow_to_displacement` followed by :func:`displacement_to_voxel_flow`, without the
    float64 physical field in between (both grids share the direction, so the change of units is a per-axis
    scale: spacing of ``grid`` over spacing of ``target``)."""
    if flow.dim() != 5 or tuple(flow.shape[1:]) != (3, *grid.GetSize()):
        raise ValueError(f"flow {tuple(flow.shape)} does not match the network grid {grid.GetSize()}")
    scale, offset = _index_map(grid, target)
    axes = [(torch.arange(n, dtype=torch.float64) * scale[a] + offset[a]).to(flow.device, torch.float32)
            for a, n in enumerate(target.GetSize())]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).view(-1, 3)
    to_target = torch.tensor(1.0 / scale, dtype=torch.float32, device=flow.device)  # grid voxels → target voxels
    return (sample(flow[:1].detach().float(), points) * to_target[:, None]).view(1, 3, *target.GetSize())


def flow_to_displacement(
    flow: torch.Tensor, grid: sitk.Image, fixed: sitk.Image, chunk: int = 16,
    translation: Sequence[float] = (0.0, 0.0, 0.0),
) -> sitk.Image:
    """Resample a network flow into a physical displacement field on the fixed image's full grid.

    flow: ``(1, 3, X, Y, Z)`` or ``(3, X, Y, Z)`` pull-back flow in voxels of ``grid`` (the network
    grid, sharing the fixed image's direction); fixed: defines the output grid. For each fixed voxel
    centre ``p``: its continuous index ``q`` in ``grid``, the flow sampled there trilinearly (clamped
    at the border), the target ``x' = grid.TransformContinuousIndexToPhysicalPoint(q + flow(q))`` and
    the displacement ``x' − p = D·diag(s)·flow(q)`` (D, s: the grid's direction and spacing).

    Because the grid shares the fixed image's axes, ``q`` is a per-axis affine function of the fixed
    index, so trilinear sampling is done separably (and, being linear, after the conversion to mm on
    the small grid), ``chunk`` fixed k-planes at a time. ``translation`` (mm) is added to every
    displacement: an initial alignment applied to the moving image before the network ran. Returns
    a ``sitkVectorFloat64`` image with the fixed image's geometry.
    """
    flow = flow.detach().to("cpu", torch.float64)
    if flow.dim() == 5:
        flow = flow[0]
    if flow.dim() != 4 or flow.shape[0] != 3 or tuple(flow.shape[1:]) != tuple(grid.GetSize()):
        raise ValueError(f"flow {tuple(flow.shape)} does not match the network grid {grid.GetSize()}")
    size_f, size_n = fixed.GetSize(), grid.GetSize()
    scale, offset = _index_map(grid, fixed)
    weights = [_linear_weights(np.arange(size_f[a]) * scale[a] + offset[a], size_n[a]) for a in range(3)]
    # mm on the network grid in SimpleITK order (z, y, x, c); then along i and j on the small grid,
    # then chunks of fixed k-planes straight into the output.
    mm = _to_mm(flow.numpy(), _index_matrix(grid)).transpose(2, 1, 0, 3).copy()
    mm += np.asarray(translation, dtype=np.float64)  # interpolation weights sum to 1: the constant is kept
    coarse = _interpolate_axis(_interpolate_axis(mm, 2, weights[0]), 1, weights[1])  # (Z, J, I, 3)
    out = np.empty((size_f[2], size_f[1], size_f[0], 3), dtype=np.float64)
    i0, i1, w = weights[2]
    for start in range(0, size_f[2], chunk):
        part = slice(start, start + chunk)
        _interpolate_axis(coarse, 0, (i0[part], i1[part], w[part]), out=out[part])
    field = sitk.GetImageFromArray(out, isVector=True)
    field.CopyInformation(fixed)
    return field


def displacement_transform(field: sitk.Image) -> sitk.DisplacementFieldTransform:
    """A ``DisplacementFieldTransform`` over a physical field (the field image is copied, not consumed)."""
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def displacement_to_voxel_flow(field: sitk.Image) -> torch.Tensor:
    """A physical field (LPS mm) expressed in voxels of its own grid: ``(1, 3, I, J, K)`` float32 (a
    strided view), ``v = (D·diag(s))⁻¹ u`` — a similarity of the physical map, so det J is equal."""
    u = sitk.GetArrayViewFromImage(field)  # (K, J, I, 3) mm
    voxels = (u @ np.linalg.inv(_index_matrix(field)).T).astype(np.float32)
    return torch.from_numpy(voxels).permute(3, 2, 1, 0).unsqueeze(0)  # a (1, 3, I, J, K) view


def field_jacobian_determinant(field: sitk.Image, slab: int = 32) -> np.ndarray:
    """det J of ``p ↦ p + u(p)`` for a physical field, ``(I, J, K)`` float32, computed in slabs along i
    (one plane of overlap, so values equal those of :func:`rcreg.spatial.jacobian_determinant` on the
    whole field)."""
    flow = displacement_to_voxel_flow(field)
    n = flow.shape[2]
    parts = []
    for start in range(0, n, slab):
        lo, hi = max(start - 1, 0), min(start + slab + 1, n)
        detj = jacobian_determinant(flow[:, :, lo:hi])[0]
        parts.append(detj[start - lo: start - lo + min(slab, n - start)])
    return torch.cat(parts).numpy()


def compact_displacement(flow: torch.Tensor, grid: sitk.Image) -> sitk.Image:
    """A flow as a physical displacement field on its own grid, the compact form of the result.

    flow: ``(1, 3, X, Y, Z)`` pull-back flow in voxels of ``grid`` (the network grid or the finest
    refinement control grid, sharing the fixed image's axes). Returns a ``sitkVectorFloat64`` image of
    LPS-mm displacements ``D·diag(s)·flow`` on ``grid`` padded by one voxel on every side with the border
    values: ITK's linear interpolation of it then equals :func:`flow_to_displacement` (which clamps at
    the border) at every point up to one grid voxel outside ``grid``, so a transform over it resamples
    the fixed grid exactly as the dense field does, at a fraction of its size.
    """
    flow = flow.detach().to("cpu", torch.float64)
    if flow.dim() == 5:
        flow = flow[0]
    if flow.dim() != 4 or flow.shape[0] != 3 or tuple(flow.shape[1:]) != tuple(grid.GetSize()):
        raise ValueError(f"flow {tuple(flow.shape)} does not match its grid {grid.GetSize()}")
    padded = torch.nn.functional.pad(flow[None], (1, 1, 1, 1, 1, 1), mode="replicate")[0]
    matrix = _index_matrix(grid)
    field = image_from_ijk(_to_mm(padded.numpy(), matrix))  # (I, J, K, 3) mm
    field.SetSpacing(grid.GetSpacing())
    field.SetDirection(grid.GetDirection())
    field.SetOrigin((np.asarray(grid.GetOrigin()) - matrix @ np.ones(3)).tolist())
    return field


def dense_displacement(field: sitk.Image, fixed: sitk.Image, translation: Sequence[float] = (0.0, 0.0, 0.0)) -> sitk.Image:
    """A compact field (:func:`compact_displacement`) plus ``translation`` (mm) resampled on the fixed
    image's full grid: the displacement of :func:`registration_transform` at every fixed voxel."""
    return flow_to_displacement(displacement_to_voxel_flow(field), field, fixed, translation=translation)


def registration_transform(field: sitk.Image, translation: Sequence[float] = (0.0, 0.0, 0.0)) -> sitk.Transform:
    """The pull-back transform ``p ↦ p + u(p) + t``: the field ``u`` then the translation ``t`` (mm).

    Without a translation a ``DisplacementFieldTransform``; with one an ITK composite transform
    (translation, then the field: ITK applies the last added first), which ITK, ANTs, elastix and Slicer
    read from one ``.h5`` file.
    """
    displacement = displacement_transform(field)
    if not np.any(np.asarray(translation, dtype=float)):
        return displacement
    composite = sitk.CompositeTransform(sitk.TranslationTransform(3, [float(t) for t in translation]))
    composite.AddTransform(displacement)
    return composite


def inverse_transform(field: sitk.Image, translation: Sequence[float] = (0.0, 0.0, 0.0),
                      iterations: int = 50, tolerance: float = 1e-3) -> sitk.Transform:
    """The inverse of :func:`registration_transform`, ``q ↦ φ⁻¹(q − t)``.

    φ⁻¹ is the damped fixed-point inverse (:func:`rcreg.spatial.invert_flow`: at most ``iterations``, until no
    residual exceeds ``tolerance`` voxels or their mean falls below ``tolerance`` / 100) of the compact field
    on its own grid (it is defined on the fixed side, where the moving points land after removing ``t``). On
    the benchmark's fields it matches ITK's ``InvertDisplacementField`` (round-trip median and p95 within
    0.02 mm) in ¼ of its time on brains.
    """
    inverse_flow = invert_flow(displacement_to_voxel_flow(field).contiguous(), iterations=iterations, tolerance=tolerance)
    inverse = image_from_ijk(_to_mm(inverse_flow[0].double().numpy(), _index_matrix(field)))
    inverse.CopyInformation(field)
    transform = displacement_transform(inverse)
    if np.any(np.asarray(translation, dtype=float)):
        composite = sitk.CompositeTransform(transform)
        composite.AddTransform(sitk.TranslationTransform(3, [-float(t) for t in translation]))
        transform = composite
    return transform


def round_trip_error(forward: sitk.Transform, inverse: sitk.Transform, reference: sitk.Image) -> np.ndarray:
    """``|φ⁻¹(φ(p)) − p|`` (mm) at every voxel centre ``p`` of ``reference``, ``(K, J, I)`` float64."""
    composite = sitk.CompositeTransform(inverse)
    composite.AddTransform(forward)  # applied first
    residual = sitk.TransformToDisplacementField(composite, sitk.sitkVectorFloat64, reference.GetSize(),
                                                 reference.GetOrigin(), reference.GetSpacing(),
                                                 reference.GetDirection())
    return np.linalg.norm(sitk.GetArrayViewFromImage(residual), axis=-1)


def translated_field(field: sitk.Image, translation: Sequence[float]) -> sitk.Image:
    """``field`` with ``translation`` (mm) added to every vector: :func:`registration_transform` as one
    displacement field on the compact grid, for viewers that take a single grid (a Slicer grid transform)."""
    array = sitk.GetArrayFromImage(field) + np.asarray(translation, dtype=np.float64)
    out = sitk.GetImageFromArray(array, isVector=True)
    out.CopyInformation(field)
    return out
