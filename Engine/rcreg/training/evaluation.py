"""Scoring a model on registration pairs on the network grid: Dice and HD95 per label, landmark error,
folding, SDlogJ, correlation and time, for test-time repeat factors r (the paper's n×r).

Both volumes of a pair are on the fixed image's network grid (the moving one resampled onto it, as
``rcreg register`` does), so a voxel flow maps fixed-grid indices to the same grid and landmarks map
through the grid's physical geometry (docs/conventions.md).
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from .. import metrics
from ..cascade import RecursiveCascadeNetwork
from ..spatial import warp
from .datasets import Volume

__all__ = ["UNREGISTERED", "map_landmarks", "score_pair", "worse_than_unregistered", "mean_std"]


def map_landmarks(flow: torch.Tensor, volume: Volume, points: np.ndarray) -> np.ndarray:
    """Map fixed-image points ``(N, 3)`` (LPS mm) through ``flow`` ``(1, 3, X, Y, Z)`` on ``volume``'s grid.

    Each point p goes to ``phys(idx(p) + u(idx(p)))`` with u linearly interpolated (clamped at the border).
    """
    ref = volume.grid
    index = np.array([ref.TransformPhysicalPointToContinuousIndex([float(c) for c in p]) for p in points])
    field = flow[0].detach().double().cpu().numpy()
    disp = np.stack([ndimage.map_coordinates(field[c], index.T, order=1, mode="nearest") for c in range(3)], axis=1)
    return np.array([ref.TransformContinuousIndexToPhysicalPoint(q.tolist()) for q in index + disp])


UNREGISTERED = ("dice", "correlation", "landmark_error")
"""Scores also computed without registration (identity field), as ``unregistered_<name>``."""
_HIGHER_IS_BETTER = {"dice": True, "correlation": True, "landmark_error": False}


def _alignment(fixed: Volume, moving: Volume, flow: torch.Tensor, warped: torch.Tensor,
               surface_distance: bool) -> dict:
    """Correlation, Dice/HD95 (mean and per label) and landmark error of ``moving`` pulled back through
    ``flow`` ``(1, 3, X, Y, Z)`` (``warped``: the moving image already resampled, ``(1, 1, X, Y, Z)``)."""
    f = fixed.image.unsqueeze(0)
    result = {"correlation": metrics.correlation(f.numpy(), warped.cpu().numpy()), "per_label": {},
              "dice": float("nan"), "hd95": float("nan"), "landmark_error": float("nan")}
    if fixed.labels is not None and moving.labels is not None:
        labels_in = moving.labels.unsqueeze(0).to(flow.device)
        warped_labels = warp(labels_in, flow, mode="nearest")[0, 0].cpu().numpy()
        target = fixed.labels[0].cpu().numpy()
        labels = sorted(v for v in np.union1d(np.unique(warped_labels), np.unique(target)) if v != 0)
        dice = metrics.dice(warped_labels, target, labels)
        hd95 = (metrics.hausdorff(warped_labels, target, fixed.grid.GetSpacing(), 95.0, labels)
                if surface_distance else {k: float("nan") for k in labels})
        result["per_label"] = {int(k): {"dice": dice[k], "hd95": hd95[k]} for k in labels}
        result["dice"], result["hd95"] = metrics.mean_score(dice), metrics.mean_score(hd95)
    if fixed.landmarks is not None and moving.landmarks is not None:
        if len(fixed.landmarks) != len(moving.landmarks):
            raise ValueError(f"{fixed.name} has {len(fixed.landmarks)} landmarks but {moving.name} has {len(moving.landmarks)}")
        mapped = map_landmarks(flow, fixed, fixed.landmarks)
        result["landmark_error"] = metrics.landmark_error(mapped, moving.landmarks)[1]
    return result


@torch.no_grad()
def score_pair(
    model: RecursiveCascadeNetwork,
    fixed: Volume,
    moving: Volume,
    repeat: int = 1,
    device: torch.device | str = "cpu",
    surface_distance: bool = True,
) -> dict:
    """Register ``moving`` to ``fixed`` (same grid) with ``model`` and score the result.

    Returns ``{"dice", "hd95", "landmark_error", "folding_fraction", "sdlogj", "correlation",
    "time_s", "per_label": {label: {"dice", "hd95"}}}`` and the same pair left unregistered,
    ``unregistered_dice``, ``unregistered_correlation``, ``unregistered_landmark_error``; label and
    landmark numbers are NaN / empty when either side lacks them. HD95 is in mm (the grid's isotropic
    spacing), landmark errors in mm.
    """
    device = torch.device(device)
    f = fixed.image.unsqueeze(0).to(device)
    m = moving.image.unsqueeze(0).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model(f, m, repeat=repeat)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    flow = out.flow.cpu()
    result = {"time_s": seconds, **metrics.flow_summary(flow), **_alignment(fixed, moving, flow, out.warped, surface_distance)}
    unregistered = _alignment(fixed, moving, torch.zeros_like(flow), moving.image.unsqueeze(0), surface_distance=False)
    result.update({f"unregistered_{k}": unregistered[k] for k in UNREGISTERED})
    return result


def worse_than_unregistered(scores: dict) -> list[str]:
    """The names of :data:`UNREGISTERED` scores (plain or ``(mean, std, n)``) that registration made worse."""
    def value(key: str) -> float:
        v = scores[key]
        return v[0] if isinstance(v, tuple) else v

    worse = []
    for name in UNREGISTERED:
        after, before = value(name), value(f"unregistered_{name}")
        if after < before if _HIGHER_IS_BETTER[name] else after > before:  # False when either is NaN
            worse.append(name)
    return worse


def mean_std(rows: Sequence[dict], keys: Sequence[str]) -> dict:
    """Mean and standard deviation of ``keys`` over ``rows``, ignoring NaN: ``{key: (mean, std, count)}``."""
    out = {}
    for key in keys:
        values = np.array([r[key] for r in rows], dtype=float)
        values = values[~np.isnan(values)]
        out[key] = (float(values.mean()), float(values.std()), int(values.size)) if values.size else (math.nan, math.nan, 0)
    return out
