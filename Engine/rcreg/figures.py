"""The registration overview figure: three orthogonal slices of fixed, moving, warped, a checkerboard
and the deformation grid, drawn with Pillow (no display, no plotting library: matplotlib's import and
layout took 0.7 s of every run)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .io import array_ijk, atomic_path
from .resampling import resample

__all__ = ["registration_figure", "checkerboard"]

_PLANES = ((2, "axial (k)"), (1, "coronal (j)"), (0, "sagittal (i)"))  # axis held fixed, title
CELL = 232  #: pixels of the square box each panel is fitted into
TITLE = 18  #: pixels above each panel for its title
MARGIN = 4  #: pixels around each box
GRID_COLOUR = (214, 39, 40)


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


def _plane(fixed: sitk.Image, axis: int, index: int) -> sitk.Image:
    """The one-voxel-thick fixed slice ``index`` across ``axis``, as an image (its grid for resampling)."""
    box = [slice(None)] * 3
    box[axis] = slice(index, index + 1)
    return fixed[tuple(box)]


def _slice_displacement(transform: sitk.Transform, plane: sitk.Image, axis: int) -> np.ndarray:
    """The displacement (mm) of ``transform`` on a fixed ``plane`` (:func:`_plane`) across ``axis``, laid out
    as :func:`_slice` lays a slice out: (rows = second in-plane axis, columns = first, 3)."""
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, plane.GetSize(), plane.GetOrigin(),
                                              plane.GetSpacing(), plane.GetDirection())
    volume = array_ijk(field)  # (i, j, k, 3) with one plane along axis
    return _slice(volume, axis)


def _panel(slice01: np.ndarray, aspect: float, axial: bool):
    """A [0, 1] slice (rows: 2nd in-plane axis) as a grey image fitted into a :data:`CELL` box with the
    pixel ``aspect`` (row / column spacing), and the map from slice (column, row) positions to its pixels.
    Rows run bottom to top, except in the axial plane (first rows on top)."""
    from PIL import Image

    rows, cols = slice01.shape
    scale = CELL / max(rows * aspect, cols)
    size = (max(1, round(cols * scale)), max(1, round(rows * aspect * scale)))
    shown = slice01 if axial else slice01[::-1]
    image = Image.fromarray(np.round(shown * 255).astype(np.uint8), "L").resize(size, Image.BILINEAR)
    sx, sy = size[0] / cols, size[1] / rows

    def to_pixels(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.stack([(x + 0.5) * sx, ((y + 0.5) if axial else (rows - 0.5 - y)) * sy], axis=-1)

    return image, to_pixels


def registration_figure(
    fixed: sitk.Image, moving: sitk.Image, warped: sitk.Image, transform: sitk.Transform, path: str | os.PathLike,
    *, before: sitk.Transform, grid_lines: int = 24,
) -> Path:
    """Save a PNG with one row per orthogonal plane (middle slices of the fixed grid).

    Columns: fixed, moving (its own grid, resampled through ``before`` — the initial alignment — onto the
    fixed slices only, as it was before registration), warped, checkerboard of fixed
    and warped, and the deformation grid — lines of the fixed grid displaced by the in-plane
    components of the pull-back ``transform``'s displacement, sampled on the slice only (in voxels, the
    slice's mean displacement removed so a large overall shift does not push the grid out of view),
    drawn over the fixed slice. Slices are in index space, each intensity-scaled between its 1st and
    99th percentiles; rows of a slice run bottom to top, except the axial row's, drawn with the first
    rows (anterior for LPS-aligned images) on top.
    """
    from PIL import Image, ImageDraw, ImageFont

    vols = [array_ijk(im, view=True) for im in (fixed, warped)]
    index_matrix = np.asarray(fixed.GetDirection()).reshape(3, 3) * np.asarray(fixed.GetSpacing())
    to_voxels = np.linalg.inv(index_matrix)
    centre = [n // 2 for n in fixed.GetSize()]
    spacing = fixed.GetSpacing()
    box_w, box_h = CELL + 2 * MARGIN, TITLE + CELL + 2 * MARGIN
    figure = Image.new("RGB", (5 * box_w, 3 * box_h), "white")
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default(size=11)
    for row, (axis, title) in enumerate(_PLANES):
        a, b = [d for d in range(3) if d != axis]  # in-plane axes: columns a, rows b
        aspect = spacing[b] / spacing[a]
        plane = _plane(fixed, axis, centre[axis])
        moving_plane = array_ijk(resample(moving, plane, before, keep_type=False))  # a copy: the image is temporary
        f, m, w = (_scaled(_slice(v, axis).astype(np.float32)) for v in (vols[0], moving_plane, vols[1]))
        disp = _slice_displacement(transform, plane, axis) @ to_voxels.T  # (b, a, 3) voxels
        disp = disp - disp.mean(axis=(0, 1))
        panels = [(f, "fixed"), (m, "moving"), (w, "warped"), (checkerboard(f, w), "fixed | warped"),
                  (0.5 + 0.5 * f, "deformation grid")]  # the fixed slice at half opacity on white
        for col, (values, name) in enumerate(panels):
            image, to_pixels = _panel(values, aspect, axial=axis == 2)
            if name == "deformation grid":
                image = image.convert("RGB")
                lines = ImageDraw.Draw(image)
                rows_b, cols_a = np.indices(disp.shape[:2])
                points = to_pixels(cols_a + disp[..., a], rows_b + disp[..., b])  # (b, a, 2) pixels
                for r in range(0, disp.shape[0], max(1, disp.shape[0] // grid_lines)):
                    lines.line([tuple(p) for p in points[r]], fill=GRID_COLOUR, width=1)
                for c in range(0, disp.shape[1], max(1, disp.shape[1] // grid_lines)):
                    lines.line([tuple(p) for p in points[:, c]], fill=GRID_COLOUR, width=1)
            left, top = col * box_w, row * box_h
            label = f"{name}: {title}"
            draw.text((left + (box_w - draw.textlength(label, font=font)) / 2, top + MARGIN), label,
                      fill="black", font=font)
            figure.paste(image, (left + MARGIN + (CELL - image.width) // 2,
                                 top + MARGIN + TITLE + (CELL - image.height) // 2))
    with atomic_path(path) as tmp:
        figure.save(tmp, format="PNG")
    return Path(path)
