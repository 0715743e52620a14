"""From images in physical space to the network's input tensors (docs/conventions.md, "Network grid").

The model card (a dict, see docs/model-card.md) gives the grid and the intensity normalisation::

    {"grid": {"shape": [128, 128, 128]},
     "normalization": {"type": "percentile", "low": 1, "high": 99}}   # MR
     "normalization": {"type": "window", "min": -1000, "max": 400}}   # CT (HU)

The fixed image defines the output space: :func:`network_grid` builds an isotropic grid of the card's
shape covering the fixed field of view (or a mask's bounding box, or with the card's
``"grid": {"region": "foreground"}`` the pair's foreground: :func:`card_grid`), aspect ratio kept, and
both images are resampled onto it by :func:`preprocess`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from .io import MIN_SIZE, ImageLike, InputError, array_ijk, as_image, read_label_map, same_grid
from .options import ALIGNMENTS, GRID_REGIONS, InitialAlignment

__all__ = ["network_grid", "grid_region", "foreground_region", "card_grid", "refinement_grids", "resized_grid", "normalize", "normalized_image", "on_grid", "pyramid",
           "preprocess", "preprocess_labels", "grid_shape", "initial_translation"]


def grid_shape(card: dict) -> tuple[int, int, int]:
    """The network grid shape ``(X, Y, Z)`` of a model card."""
    try:
        shape = tuple(int(n) for n in card["grid"]["shape"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"model card has no valid grid shape: {card.get('grid')!r}") from None
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"model card grid shape must be 3 sizes ≥ 2, got {shape}")
    return shape


#: A voxel is foreground where its normalised intensity (:func:`normalize`) exceeds this.
FOREGROUND_LEVEL = 0.05
#: Slices holding fewer foreground voxels than this share of the fullest slice's do not widen the box (noise).
_SLICE_SHARE = 0.005
#: Margin (mm) around the foreground box: room for the deformation and the network's border.
FOREGROUND_MARGIN_MM = 8.0


def grid_region(card: dict, mask: Optional[sitk.Image] = None) -> str:
    """What the network grid of a model card covers: ``"mask"`` (the mask's bounding box) when a mask is given,
    else the card's ``grid.region`` (a :data:`~rcreg.options.GridRegion`; ``"image"`` when absent)."""
    if mask is not None:
        return "mask"
    region = (card.get("grid") or {}).get("region", "image")
    if region not in GRID_REGIONS:
        raise ValueError(f"model card grid region must be one of {', '.join(GRID_REGIONS)}, got {region!r}")
    return region


def _foreground_box(normalized: sitk.Image) -> Optional[np.ndarray]:
    """Corners ``(2, 3)`` (first and last voxel index, i j k) of the foreground of a normalised image; None if empty."""
    fg = sitk.GetArrayViewFromImage(normalized) > FOREGROUND_LEVEL  # (k, j, i)
    box = []
    for axes in [(0, 1), (0, 2), (1, 2)]:  # counts per i, per j, per k slice
        counts = fg.sum(axis=axes)
        kept = np.nonzero(counts >= max(1.0, _SLICE_SHARE * counts.max()))[0]
        if not kept.size:
            return None
        box.append((kept[0], kept[-1]))
    return np.asarray(box, dtype=float).T


def foreground_region(fixed: sitk.Image, *others: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """First and last continuous voxel index (i, j, k) of the fixed image bounding the foreground of the
    normalised ``fixed`` image and of every image in ``others`` (mapped through physical space), widened by
    :data:`FOREGROUND_MARGIN_MM` and clipped to the fixed field of view; the whole image if all are empty."""
    size = np.asarray(fixed.GetSize(), dtype=float)
    points = []
    for image in (fixed, *others):
        box = _foreground_box(image)
        if box is None:
            continue
        for corner in np.array(np.meshgrid(*box.T, indexing="ij")).reshape(3, -1).T:
            physical = image.TransformContinuousIndexToPhysicalPoint(corner.tolist())
            points.append(fixed.TransformPhysicalPointToContinuousIndex(physical))
    if not points:
        return np.zeros(3), size - 1.0
    margin = FOREGROUND_MARGIN_MM / np.asarray(fixed.GetSpacing())
    points = np.asarray(points)
    return (np.clip(points.min(axis=0) - margin, 0.0, size - 1.0),
            np.clip(points.max(axis=0) + margin, 0.0, size - 1.0))


def _region(fixed: sitk.Image, mask: Optional[sitk.Image]) -> tuple[np.ndarray, np.ndarray]:
    """First and last voxel index (i, j, k) of the fixed image, or of the non-zero bounding box of ``mask``."""
    low, high = np.zeros(3), np.asarray(fixed.GetSize()) - 1.0
    if mask is not None:
        if not same_grid(mask, fixed):
            raise InputError("mask is not on the fixed image's grid")
        nonzero = np.nonzero(sitk.GetArrayViewFromImage(mask))
        if not nonzero[0].size:
            raise InputError("mask is empty")
        index = np.stack(nonzero[::-1])  # (3, N) in i, j, k order
        low, high = index.min(axis=1).astype(float), index.max(axis=1).astype(float)
        extent = tuple(int(n) for n in high - low + 1)
        if min(extent) < MIN_SIZE:
            raise InputError(f"mask is too small: its non-zero region spans {extent} voxels, "
                             f"need at least {MIN_SIZE} along every axis")
    return low, high


def network_grid(fixed: sitk.Image, shape: Sequence[int], mask: Optional[sitk.Image] = None,
                 region: Optional[tuple[np.ndarray, np.ndarray]] = None) -> sitk.Image:
    """An empty image (the network grid) of size ``shape`` (X, Y, Z) for the network, in the fixed image's frame.

    Its spacing is isotropic, ``max_a(extent_a / shape_a)`` where ``extent_a`` is the field of view
    along index axis a (voxel edges to voxel edges; of the mask's non-zero bounding box if ``mask``
    — on the fixed grid — is given, of ``region``, first and last voxel index, if that is), so the
    region fits on every axis; it is centred on that region and padded along the other axes, never
    stretched. Direction = the fixed image's direction.
    """
    shape = np.asarray(shape, dtype=int)
    spacing = np.asarray(fixed.GetSpacing())
    low, high = region if region is not None else _region(fixed, mask)
    extent = (high - low + 1.0) * spacing
    iso = float(np.max(extent / shape))
    centre = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint(((low + high) / 2).tolist()))
    direction = np.asarray(fixed.GetDirection()).reshape(3, 3)
    origin = centre - direction @ (np.full(3, iso) * (shape - 1) / 2.0)
    grid = sitk.Image([int(n) for n in shape], sitk.sitkUInt8)
    grid.SetSpacing([iso] * 3)
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def card_grid(card: dict, fixed: sitk.Image, moving: Optional[sitk.Image] = None,
              mask: Optional[sitk.Image] = None) -> sitk.Image:
    """The network grid of a model card for a pair of normalised images (:func:`normalized_image`):
    over the mask's bounding box if one is given, else over what the card's :func:`grid_region` says
    (``"foreground"``: :func:`foreground_region` of ``fixed`` and ``moving``)."""
    region = None
    if grid_region(card, mask) == "foreground":
        region = foreground_region(fixed, *([moving] if moving is not None else []))
    return network_grid(fixed, grid_shape(card), mask, region)


def refinement_grids(fixed: sitk.Image, spacing: float, levels: int, mask: Optional[sitk.Image] = None) -> list[sitk.Image]:
    """Empty images (grids) for test-time refinement (:mod:`rcreg.refinement`), coarse to fine.

    Every level covers the fixed image's voxel centres (or the mask's bounding box) with its first
    and last voxel centres on the region's, in the fixed image's direction; level ``l`` of ``L`` has
    about ``spacing · 2^(L−1−l)`` mm between voxels (exactly ``extent / (n − 1)`` per axis, ≥ 4 voxels).
    With ``spacing`` equal to the fixed spacing the finest level is the fixed grid itself.
    """
    low, high = _region(fixed, mask)
    extent = (high - low) * np.asarray(fixed.GetSpacing())
    origin = fixed.TransformContinuousIndexToPhysicalPoint(low.tolist())
    grids = []
    for level in range(levels):
        step = spacing * 2 ** (levels - 1 - level)
        size = np.maximum(np.round(extent / step).astype(int) + 1, 4)
        grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
        grid.SetSpacing(np.where(extent > 0, extent / (size - 1), step).tolist())
        grid.SetDirection(fixed.GetDirection())
        grid.SetOrigin(origin)
        grids.append(grid)
    return grids


def resized_grid(grid: sitk.Image, shape: Sequence[int]) -> sitk.Image:
    """An empty image (a grid) of ``shape`` over the same box as ``grid`` (first and last voxel centres
    where ``grid`` has them, same direction): the geometry of :func:`rcreg.spatial.resize_flow`'s output."""
    old, new = np.asarray(grid.GetSize(), dtype=float), np.asarray(shape, dtype=float)
    out = sitk.Image([int(n) for n in shape], sitk.sitkUInt8)
    out.SetSpacing((np.asarray(grid.GetSpacing()) * (old - 1) / np.maximum(new - 1, 1)).tolist())
    out.SetDirection(grid.GetDirection())
    out.SetOrigin(grid.GetOrigin())
    return out


def normalize(array: np.ndarray, spec: dict) -> np.ndarray:
    """Intensities scaled to [0, 1] as float32, clipped.

    ``{"type": "window", "min": a, "max": b}`` maps [a, b] (e.g. a CT window in HU);
    ``{"type": "percentile", "low": p, "high": q}`` maps the image's own p-th … q-th percentiles
    (e.g. MR); if those coincide (a mostly empty image) the full min … max range is used.
    """
    array = np.asarray(array, dtype=np.float32)
    kind = spec.get("type")
    if kind == "window":
        low, high = float(spec["min"]), float(spec["max"])
        if not high > low:
            raise ValueError(f"normalisation window max {high} must exceed min {low}")
    elif kind == "percentile":
        low, high = (float(v) for v in np.percentile(array, [spec.get("low", 1), spec.get("high", 99)]))
        if not high > low:
            low, high = float(array.min()), float(array.max())
        if not high > low:
            return np.zeros_like(array)
    else:
        raise ValueError(f"unknown normalisation type {kind!r} (use 'window' or 'percentile')")
    out = (array - low) * np.float32(1.0 / (high - low))
    return np.clip(out, 0.0, 1.0, out=out)


def _centre_of_mass(image: sitk.Image, spec: dict, name: str) -> np.ndarray:
    """Physical centre of mass (LPS mm) of the normalised intensities of ``image``."""
    weights = normalize(sitk.GetArrayViewFromImage(image), spec)  # (k, j, i)
    total = float(weights.sum(dtype=np.float64))
    if total <= 0:
        raise InputError(f"{name}: no intensity inside the model's normalisation range; cannot align centres of mass")
    index = [float((weights.sum(axis=axes, dtype=np.float64) * np.arange(weights.shape[2 - a])).sum()) / total
             for a, axes in enumerate([(0, 1), (0, 2), (1, 2)])]
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(index))


def initial_translation(fixed: sitk.Image, moving: sitk.Image, method: InitialAlignment, card: dict,
                        name: str = "moving image") -> np.ndarray:
    """Translation ``t`` (LPS mm) bringing the moving image over the fixed one before the network runs:
    the fixed point ``p`` is first taken to ``p + t`` in moving space.

    ``"none"``: zero (trust the images' physical coordinates); ``"geometry"``: align the centres of
    the two fields of view; ``"mass"``: align the centres of mass of the intensities as normalised by
    the card (as ANTs' ``[fixed,moving,0|1]`` initialisations do).
    """
    if method == "none":
        return np.zeros(3)
    if method == "geometry":
        centre = lambda im: np.asarray(im.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in im.GetSize()]))
        return centre(moving) - centre(fixed)
    if method == "mass":
        spec = card.get("normalization") or {"type": "percentile", "low": 1, "high": 99}
        return _centre_of_mass(moving, spec, name) - _centre_of_mass(fixed, spec, "fixed image")
    raise ValueError(f"unknown initial alignment {method!r}; choose one of {', '.join(ALIGNMENTS)}")


def _antialias(image: sitk.Image, target_spacing: float) -> sitk.Image:
    """Gaussian-smooth the axes whose spacing is finer than ``target_spacing`` before downsampling.

    σ_a = ½·√(t² − s_a²) mm on axis a (t: target spacing, s_a: image spacing); no-op if none is finer.
    """
    spacing = np.asarray(image.GetSpacing())
    sigma = 0.5 * np.sqrt(np.maximum(target_spacing ** 2 - spacing ** 2, 0.0))
    if not np.any(sigma > 0.25 * spacing):
        return image
    return sitk.SmoothingRecursiveGaussian(image, np.maximum(sigma, 1e-3 * spacing).tolist())


def normalized_image(image: sitk.Image, card: dict) -> sitk.Image:
    """``image`` with intensities normalised by the card (:func:`normalize`), float32, same geometry.

    Normalised on the original voxels, so padding outside the image does not bias the percentiles."""
    spec = card.get("normalization") or {"type": "percentile", "low": 1, "high": 99}
    normalized = sitk.GetImageFromArray(normalize(sitk.GetArrayViewFromImage(image), spec))
    normalized.CopyInformation(image)
    return normalized


def _resampled(image: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """``image`` smoothed against aliasing and linearly resampled onto ``grid`` (0 outside), float32."""
    smoothed = _antialias(image, float(max(grid.GetSpacing())))
    return sitk.Resample(smoothed, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def _tensor(image: sitk.Image) -> torch.Tensor:
    """A SimpleITK image as a ``(1, 1, X, Y, Z)`` tensor, axes in ITK index order (i, j, k)."""
    array = array_ijk(image)
    return torch.from_numpy(np.ascontiguousarray(array)).view(1, 1, *array.shape)


def on_grid(normalized: sitk.Image, grid: sitk.Image) -> torch.Tensor:
    """A normalised image smoothed against aliasing and linearly resampled onto ``grid`` (0
    outside): ``(1, 1, X, Y, Z)`` float32, axes in ITK index order (i, j, k)."""
    return _tensor(_resampled(normalized, grid))


def pyramid(normalized: sitk.Image, grids: Sequence[sitk.Image]) -> list[torch.Tensor]:
    """A normalised image on each of ``grids`` (coarse to fine, over one box, e.g. from
    :func:`refinement_grids`) as :func:`on_grid` tensors: the finest from the image itself, every
    coarser level from the next finer one, so the full-resolution image is smoothed only once
    (2.2 → 0.9 s for a 256³ pair)."""
    levels, source = [], normalized
    for grid in reversed(grids):
        source = _resampled(source, grid)
        levels.append(_tensor(source))
    return levels[::-1]


def preprocess(
    image: ImageLike, card: dict, grid: Optional[sitk.Image] = None
) -> tuple[torch.Tensor, sitk.Image]:
    """Normalise ``image`` (:func:`normalized_image`) and resample it onto the network grid (:func:`on_grid`).

    ``grid``: the network grid (from :func:`card_grid` on the fixed image); if omitted,
    ``image`` is treated as the fixed image and its own grid is built from the card.

    Returns ``(tensor, grid)`` with ``tensor`` of shape ``(1, 1, X, Y, Z)``, float32 in [0, 1],
    axes in ITK index order (i, j, k).
    """
    normalized = normalized_image(as_image(image), card)
    if grid is None:
        grid = card_grid(card, normalized)
    return on_grid(normalized, grid), grid


def preprocess_labels(labels: ImageLike, grid: sitk.Image) -> torch.Tensor:
    """Resample a label map onto the network grid ``grid`` by nearest neighbour (outside = 0).

    Returns ``(1, 1, X, Y, Z)`` int64, axes in ITK index order (i, j, k), like :func:`preprocess`.
    """
    label_map = read_label_map(labels)
    resampled = sitk.Resample(label_map, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt32)
    array = array_ijk(resampled).astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(array)).view(1, 1, *array.shape)
