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

__all__ = ["map_landmarks", "score_pair", "summarize"]


def map_landmarks(flow: torch.Tensor, volume: Volume, points: np.ndarray) -> np.ndarray:
    """Map fixed-image points ``(N, 3)`` (LPS mm) through ``flow`` ``(1, 3, X, Y, Z)`` on ``volume``'s grid.

    Each point p goes to ``phys(idx(p) + u(idx(p)))`` with u linearly interpolated (clamped at the border).
    """
    ref = volume.reference
    index = np.array([ref.TransformPhysicalPointToContinuousIndex([float(c) for c in p]) for p in points])
    field = flow[0].detach().double().cpu().numpy()
    disp = np.stack([ndimage.map_coordinates(field[c], index.T, order=1, mode="nearest") for c in range(3)], axis=1)
    return np.array([ref.TransformContinuousIndexToPhysicalPoint(q.tolist()) for q in index + disp])


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
    "time_s", "per_label": {label: {"dice", "hd95"}}}``; label and landmark numbers are NaN / empty
    when either side lacks them. HD95 is in mm (the grid's isotropic spacing).
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
    result = {"time_s": seconds, **metrics.summary(out.flow.cpu())}
    result["correlation"] = metrics.correlation(f.cpu().numpy(), out.warped.cpu().numpy())
    result["per_label"] = {}
    result["dice"] = result["hd95"] = float("nan")
    if fixed.labels is not None and moving.labels is not None:
        warped = warp(moving.labels.unsqueeze(0).to(device), out.flow, mode="nearest")[0, 0].cpu().numpy()
        target = fixed.labels[0].cpu().numpy()
        labels = sorted(v for v in np.union1d(np.unique(warped), np.unique(target)) if v != 0)
        dice = metrics.dice(warped, target, labels)
        hd95 = (metrics.hausdorff(warped, target, fixed.reference.GetSpacing(), 95.0, labels)
                if surface_distance else {k: float("nan") for k in labels})
        result["per_label"] = {int(k): {"dice": dice[k], "hd95": hd95[k]} for k in labels}
        result["dice"], result["hd95"] = metrics.mean_score(dice), metrics.mean_score(hd95)
    result["landmark_error"] = float("nan")
    if fixed.landmarks is not None and moving.landmarks is not None:
        if len(fixed.landmarks) != len(moving.landmarks):
            raise ValueError(f"{fixed.name} has {len(fixed.landmarks)} landmarks but {moving.name} has {len(moving.landmarks)}")
        mapped = map_landmarks(out.flow, fixed, fixed.landmarks)
        result["landmark_error"] = metrics.landmark_error(mapped, moving.landmarks)[1]
    return result


def summarize(rows: Sequence[dict], keys: Sequence[str]) -> dict:
    """Mean and standard deviation of ``keys`` over ``rows``, ignoring NaN: ``{key: (mean, std, count)}``."""
    out = {}
    for key in keys:
        values = np.array([r[key] for r in rows], dtype=float)
        values = values[~np.isnan(values)]
        out[key] = (float(values.mean()), float(values.std()), int(values.size)) if values.size else (math.nan, math.nan, 0)
    return out
