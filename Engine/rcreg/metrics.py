"""Evaluation metrics on numpy arrays (any resolution): overlap, surface distance, landmarks, Jacobians.

Arrays are in ITK index order (i, j, k) and ``spacing`` is ``(sx, sy, sz)`` in mm in that same order
(docs/conventions.md). Label scores are dictionaries ``{label: value}``; :func:`mean_score` averages
them. Jacobian-determinant arrays come from :func:`rcreg.spatial.jacobian_determinant`.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from .spatial import jacobian_determinant

__all__ = [
    "dice",
    "jaccard",
    "mean_score",
    "hausdorff",
    "landmark_error",
    "folding_fraction",
    "sdlogj",
    "jacobian_std",
    "correlation",
    "flow_summary",
]


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")


def _labels(a: np.ndarray, b: np.ndarray, labels: Optional[Iterable[int]]) -> list:
    """The labels to score: those given, else every non-zero value present in ``a`` or ``b``."""
    if labels is not None:
        return list(labels)
    return [v.item() for v in np.union1d(np.unique(a), np.unique(b)) if v != 0]


def _compact(a: np.ndarray, b: np.ndarray, labels: list) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` with the scored ``labels`` renumbered 1…L in that order and everything else 0, so
    per-label work can use bincount and find_objects (cost independent of the number of labels)."""
    a, b = (x.view(np.uint8) if x.dtype == bool else x for x in (a, b))  # masks: index by value, not as masks
    wanted = np.asarray(labels, dtype=np.int64)
    top = int(max(a.max(initial=0), b.max(initial=0)))
    if a.min(initial=0) >= 0 and b.min(initial=0) >= 0 and top < 1 << 24:  # a lookup table indexed by value
        lookup = np.zeros(top + 1, dtype=np.int32)
        inside = (wanted >= 0) & (wanted <= top)
        lookup[wanted[inside]] = np.flatnonzero(inside) + 1
        return lookup[a], lookup[b]
    values, inverse = np.unique(np.concatenate([a.ravel(), b.ravel()]), return_inverse=True)
    where = np.minimum(np.searchsorted(values, wanted), len(values) - 1)
    present = values[where] == wanted
    lookup = np.zeros(len(values), dtype=np.int32)
    lookup[where[present]] = np.flatnonzero(present) + 1
    compact = lookup[inverse.ravel()]
    return compact[: a.size].reshape(a.shape), compact[a.size:].reshape(b.shape)


def _overlap(a: np.ndarray, b: np.ndarray, labels: Optional[Iterable[int]]):
    """Yield ``(label, |A|, |B|, |A∩B|)`` for every scored label (one pass over the voxels, any number of labels)."""
    a, b = np.asarray(a), np.asarray(b)
    _check_same_shape(a, b)
    scored = _labels(a, b, labels)
    ca, cb = _compact(a, b, scored)
    n = len(scored) + 1
    size_a, size_b = np.bincount(ca.ravel(), minlength=n), np.bincount(cb.ravel(), minlength=n)
    both = np.bincount(ca.ravel()[ca.ravel() == cb.ravel()], minlength=n)
    for index, label in enumerate(scored, start=1):
        yield label, int(size_a[index]), int(size_b[index]), int(both[index])


def dice(a: np.ndarray, b: np.ndarray, labels: Optional[Iterable[int]] = None) -> dict:
    """Dice ``2|A∩B| / (|A| + |B|)`` per label (default: all non-zero labels); NaN where both are empty."""
    return {lab: 2.0 * both / (na + nb) if na + nb else float("nan") for lab, na, nb, both in _overlap(a, b, labels)}


def jaccard(a: np.ndarray, b: np.ndarray, labels: Optional[Iterable[int]] = None) -> dict:
    """Jaccard ``|A∩B| / |A∪B|`` per label (default: all non-zero labels); NaN where both are empty."""
    return {lab: both / (na + nb - both) if na + nb else float("nan") for lab, na, nb, both in _overlap(a, b, labels)}


def mean_score(scores: dict) -> float:
    """Mean of a ``{label: value}`` dictionary, ignoring NaN entries (NaN if nothing is left)."""
    values = np.array(list(scores.values()), dtype=float)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one 6-neighbour outside it (outside the array counts as outside)."""
    structure = ndimage.generate_binary_structure(3, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def hausdorff(
    a: np.ndarray,
    b: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    percentile: float = 95.0,
    labels: Optional[Iterable[int]] = None,
) -> dict:
    """Symmetric surface Hausdorff distance in mm per label: ``max(P(d(∂A→∂B)), P(d(∂B→∂A)))``.

    ``P`` is the ``percentile`` (100 = the classic maximum) of the distances from every surface voxel of
    one mask to the nearest surface voxel of the other (Euclidean, with ``spacing`` in mm). NaN where
    either mask is empty. Work is cropped to the labels' bounding box, so large images stay cheap.
    """
    a, b = np.asarray(a), np.asarray(b)
    _check_same_shape(a, b)
    if len(spacing) != a.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {a.ndim}-D array")
    result = {}
    scored = _labels(a, b, labels)
    ca, cb = _compact(a, b, scored)
    boxes_a, boxes_b = ndimage.find_objects(ca, len(scored)), ndimage.find_objects(cb, len(scored))
    for index, label in enumerate(scored, start=1):
        box_a, box_b = boxes_a[index - 1], boxes_b[index - 1]
        if box_a is None or box_b is None:
            result[label] = float("nan")
            continue
        # Both masks' bounding box plus one voxel, so erosion sees the true neighbours.
        box = tuple(slice(max(min(p.start, q.start) - 1, 0), min(max(p.stop, q.stop) + 1, n))
                    for p, q, n in zip(box_a, box_b, a.shape))
        in_a, in_b = ca[box] == index, cb[box] == index
        surf_a, surf_b = _surface(in_a), _surface(in_b)
        a_to_b = ndimage.distance_transform_edt(~surf_b, sampling=spacing)[surf_a]
        b_to_a = ndimage.distance_transform_edt(~surf_a, sampling=spacing)[surf_b]
        result[label] = float(max(np.percentile(a_to_b, percentile), np.percentile(b_to_a, percentile)))
    return result


def landmark_error(mapped_points: np.ndarray, target_points: np.ndarray) -> tuple[np.ndarray, float]:
    """Euclidean distances between corresponding points ``(N, 3)`` (mm): ``(per_point, mean)``."""
    mapped, target = np.asarray(mapped_points, dtype=float), np.asarray(target_points, dtype=float)
    if mapped.shape != target.shape or mapped.ndim != 2:
        raise ValueError(f"landmark arrays must both be (N, 3), got {mapped.shape} and {target.shape}")
    errors = np.linalg.norm(mapped - target, axis=1)
    return errors, float(errors.mean())


def folding_fraction(detj: np.ndarray) -> float:
    """Share of voxels whose Jacobian determinant is ≤ 0 (folded)."""
    return float(np.mean(np.asarray(detj) <= 0))


def sdlogj(detj: np.ndarray) -> float:
    """Standard deviation of ``log det J`` over the voxels with ``det J > 0``.

    Folded voxels have no logarithm; they are left out here and reported by :func:`folding_fraction`
    (rather than clipped to a small positive value, which would make the number depend on the clip).
    """
    detj = np.asarray(detj, dtype=float)
    positive = detj[detj > 0]
    return float(np.log(positive).std()) if positive.size else float("nan")


def jacobian_std(detj: np.ndarray) -> float:
    """Standard deviation of ``det J`` over all voxels: the paper's "Jacobian" number (not a folding %)."""
    return float(np.asarray(detj, dtype=float).std())


def correlation(a: np.ndarray, b: np.ndarray, chunk: int = 1 << 20) -> float:
    """Pearson correlation of two images over all voxels.

    Two passes in float64 over ``chunk`` voxels at a time (means, then centred moments), so a 256³
    pair needs no full-size float64 copies (10× faster than converting whole volumes)."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.size} vs {b.size} voxels")
    parts = [slice(start, start + chunk) for start in range(0, a.size, chunk)]
    mean_a = sum(float(a[p].sum(dtype=np.float64)) for p in parts) / a.size
    mean_b = sum(float(b[p].sum(dtype=np.float64)) for p in parts) / b.size
    ab = aa = bb = 0.0
    for p in parts:
        x, y = a[p].astype(np.float64) - mean_a, b[p].astype(np.float64) - mean_b
        ab, aa, bb = ab + float(x @ y), aa + float(x @ x), bb + float(y @ y)
    return ab / np.sqrt(aa * bb)


def flow_summary(flow: torch.Tensor) -> dict:
    """Regularity of one voxel flow ``(3, X, Y, Z)`` or ``(1, 3, X, Y, Z)``: folding fraction, SDlogJ,
    the paper's Jacobian std and the mean determinant, from :func:`rcreg.spatial.jacobian_determinant`."""
    if flow.dim() == 4:
        flow = flow.unsqueeze(0)
    if flow.dim() != 5 or flow.shape[:2] != (1, 3):
        raise ValueError(f"summary needs one flow (3, X, Y, Z) or (1, 3, X, Y, Z), got {tuple(flow.shape)}")
    with torch.no_grad():
        detj = jacobian_determinant(flow.double())[0].cpu().numpy()
    return {
        "folding_fraction": folding_fraction(detj),
        "sdlogj": sdlogj(detj),
        "jacobian_std": jacobian_std(detj),
        "mean_detj": float(detj.mean()),
    }
