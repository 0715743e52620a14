"""The registration overview figure: three orthogonal slices of fixed, moving, warped, a checkerboard
and the deformation grid (matplotlib, Agg backend; no display needed)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .io import array_ijk, atomic_path

__all__ = ["registration_figure", "checkerboard"]

_PLANES = ((2, "axial (k)"), (1, "coronal (j)"), (0, "sagittal (i)"))  # axis held fixed, title


def checkerboard(a: np.ndarray, b: np.ndarray, squares: int = 8) -> np.ndarray:
    """2D checkerboard of two equally shaped images: ``a`` on the even squares, ``b`` on the odd ones."""
    rows, cols = np.indices(a.shape)
    tiles = (rows * squares // a.shape[0] + cols * squares // a.shape[1]) % 2
    return np.where(tiles == 0, a, b)


def _scaled(array: np.ndarray) -> np.ndarray:
    """Intensities of a slice mapped to [0, 1] with its 1st and 99th percentiles."""
    low, high = np.percentile(array, [1, 99])
    return np.clip((array - low) / (high - low), 0, 1) if high > low else np.zeros_like(array, dtype=float)


def _slice(volume: np.ndarray, axis: int) -> np.ndarray:
    """Middle slice across ``axis`` of an (i, j, k[, c]) volume, transposed so rows are the 2nd in-plane axis."""
    plane = volume[(slice(None),) * axis + (volume.shape[axis] // 2,)]  # a view (np.take copies the volume)
    return np.swapaxes(plane, 0, 1)


def _slice_displacement(transform: sitk.Transform, fixed: sitk.Image, axis: int, index: int) -> np.ndarray:
    """The displacement (mm) of ``transform`` on the fixed slice ``index`` across ``axis``, laid out as
    :func:`_slice` lays a slice out: (rows = second in-plane axis, columns = first, 3)."""
    box = [slice(None)] * 3
    box[axis] = slice(index, index + 1)
    plane = fixed[tuple(box)]
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, plane.GetSize(), plane.GetOrigin(),
                                              plane.GetSpacing(), plane.GetDirection())
    volume = array_ijk(field)  # (i, j, k, 3) with one plane along axis
    return _slice(volume, axis)


def registration_figure(
    fixed: sitk.Image, moving: sitk.Image, warped: sitk.Image, transform: sitk.Transform,
    path: str | os.PathLike, grid_lines: int = 24,
) -> Path:
    """Save a PNG with one row per orthogonal plane (middle slices of the fixed grid).

    Columns: fixed, moving (on the fixed grid, before registration), warped, checkerboard of fixed
    and warped, and the deformation grid — lines of the fixed grid displaced by the in-plane
    components of the pull-back ``transform``'s displacement, sampled on the slice only (in voxels, the
    slice's mean displacement removed so a large
    overall shift does not push the grid out of view), drawn over the fixed slice. Slices are in
    index space; the axial row is drawn with the first rows (anterior for LPS-aligned images) on top.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    vols = [array_ijk(im, view=True) for im in (fixed, moving, warped)]
    index_matrix = np.asarray(fixed.GetDirection()).reshape(3, 3) * np.asarray(fixed.GetSpacing())
    to_voxels = np.linalg.inv(index_matrix)
    centre = [n // 2 for n in fixed.GetSize()]
    spacing = fixed.GetSpacing()
    fig, axes = plt.subplots(3, 5, figsize=(15, 9.5))
    for row, (axis, title) in enumerate(_PLANES):
        a, b = [d for d in range(3) if d != axis]  # in-plane axes: columns a, rows b
        aspect = spacing[b] / spacing[a]
        f, m, w = (_scaled(_slice(v, axis).astype(np.float32)) for v in vols)
        panels = [(f, "fixed"), (m, "moving"), (w, "warped"), (checkerboard(f, w), "fixed | warped")]
        for col, (image, name) in enumerate(panels):
            axes[row, col].imshow(image, cmap="gray", origin="lower", aspect=aspect, vmin=0, vmax=1)
            axes[row, col].set_title(f"{name} — {title}", fontsize=9)
        ax = axes[row, 4]
        ax.imshow(f, cmap="gray", origin="lower", aspect=aspect, vmin=0, vmax=1, alpha=0.5)
        disp = _slice_displacement(transform, fixed, axis, centre[axis]) @ to_voxels.T  # (b, a, 3) voxels
        disp = disp - disp.mean(axis=(0, 1))
        rows_b, cols_a = np.indices(disp.shape[:2])
        x, y = cols_a + disp[..., a], rows_b + disp[..., b]
        for r in range(0, disp.shape[0], max(1, disp.shape[0] // grid_lines)):
            ax.plot(x[r], y[r], color="tab:red", linewidth=0.6)
        for c in range(0, disp.shape[1], max(1, disp.shape[1] // grid_lines)):
            ax.plot(x[:, c], y[:, c], color="tab:red", linewidth=0.6)
        ax.set_xlim(-0.5, disp.shape[1] - 0.5)
        ax.set_ylim(-0.5, disp.shape[0] - 0.5)
        ax.set_title(f"deformation grid — {title}", fontsize=9)
        if axis == 2:
            for panel in axes[row]:
                panel.invert_yaxis()
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return Path(path)
