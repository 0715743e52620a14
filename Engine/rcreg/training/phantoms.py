"""Synthetic phantom subjects for tests, benchmarks and a training demo that needs no downloads.

Each subject is a smooth random deformation of one base phantom (a textured ellipsoidal "body" with
two inner structures), written as NIfTI image + label map, with a CSV list for ``rcreg.training``.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..io import image_from_ijk, write_image
from ..spatial import centered_grid, warp
from .augmentation import bspline_field, random_smooth_field

__all__ = ["phantom", "write_phantoms"]


def phantom(shape: Sequence[int], generator: torch.Generator, amplitude: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One random subject: image ``(X, Y, Z)`` float32 in [0, 1] and labels ``(X, Y, Z)`` int64 (0–3).

    Labels: 1 body, 2 and 3 inner structures; the whole subject is deformed by a random smooth field
    of at most ``amplitude`` voxels.
    """
    shape = list(shape)
    x = centered_grid(shape) / torch.tensor([(n - 1) / 2.0 for n in shape]).view(3, 1, 1, 1)  # [-1, 1]

    def ellipsoid(centre, radii):
        return sum(((x[i] - centre[i]) / radii[i]).square() for i in range(3)) <= 1.0

    labels = torch.zeros(shape, dtype=torch.int64)
    labels[ellipsoid((0, 0, 0), (0.85, 0.75, 0.8))] = 1
    labels[ellipsoid((-0.3, 0.1, 0.0), (0.3, 0.35, 0.4))] = 2
    labels[ellipsoid((0.35, -0.15, 0.1), (0.25, 0.2, 0.3))] = 3
    texture = bspline_field(torch.rand(1, 1, 6, 6, 6, generator=generator, dtype=torch.float64), shape)[0, 0].float()
    intensity = torch.tensor([0.0, 0.35, 0.7, 1.0])[labels] * (0.85 + 0.3 * texture)
    flow = random_smooth_field(shape, 4, amplitude, generator)
    image = warp(intensity.view(1, 1, *shape), flow)[0, 0].clamp(0, 1)
    labels = warp(labels.view(1, 1, *shape), flow, mode="nearest")[0, 0]
    return image, labels


def _to_sitk(array: np.ndarray, spacing: float) -> sitk.Image:
    image = image_from_ijk(array)
    image.SetSpacing([spacing] * 3)
    image.SetOrigin([-(n - 1) * spacing / 2 for n in array.shape])
    return image


def write_phantoms(folder: str | os.PathLike, count: int, shape: Sequence[int] = (32, 32, 32),
                   spacing: float = 2.0, seed: int = 0) -> Path:
    """Write ``count`` phantom subjects into ``folder`` (``phantomNN.nii.gz`` + ``phantomNN_labels.nii.gz``)
    and a list ``folder/phantoms.csv`` (columns image, labels); return the list's path."""
    folder = Path(folder)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(count):
        image, labels = phantom(shape, generator)
        stem = f"phantom{i:02d}"
        write_image(_to_sitk(image.numpy(), spacing), folder / f"{stem}.nii.gz")
        write_image(_to_sitk(labels.numpy().astype(np.uint8), spacing), folder / f"{stem}_labels.nii.gz")
        rows.append([f"{stem}.nii.gz", f"{stem}_labels.nii.gz"])
    listing = folder / "phantoms.csv"
    with open(listing, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["image", "labels"], *rows])
    return listing
