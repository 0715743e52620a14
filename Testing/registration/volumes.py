"""Small oblique, anisotropic test volumes defined by analytic functions of the physical (LPS) position."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix R_z(az) · R_y(ay) · R_x(ax)."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def voxel_centres(image: sitk.Image) -> np.ndarray:
    """Physical positions of every voxel centre, ``(K, J, I, 3)`` (SimpleITK array order)."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float)
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    return index @ matrix.T + np.asarray(image.GetOrigin())


def make_image(
    size: Sequence[int], spacing: Sequence[float], direction: np.ndarray, origin: Sequence[float],
    function: Callable[[np.ndarray], np.ndarray], pixel=np.float32,
) -> sitk.Image:
    """An image whose voxel values are ``function(points)`` at the voxel centres (points ``(..., 3)`` LPS)."""
    geometry = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    geometry.SetSpacing([float(s) for s in spacing])
    geometry.SetDirection(np.asarray(direction, dtype=float).ravel().tolist())
    geometry.SetOrigin([float(o) for o in origin])
    image = sitk.GetImageFromArray(function(voxel_centres(geometry)).astype(pixel))
    image.CopyInformation(geometry)
    return image


def blobs(points: np.ndarray, shift: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """A smooth asymmetric test pattern (three Gaussian blobs) translated by ``shift`` mm."""
    p = points - np.asarray(shift)
    out = np.zeros(p.shape[:-1])
    for centre, sigma, weight in (((0, 0, 0), 9.0, 1.0), ((8, 5, -3), 4.0, 0.8), ((-6, -4, 6), 3.0, 0.6)):
        out += weight * np.exp(-((p - np.asarray(centre, float)) ** 2).sum(-1) / (2 * sigma ** 2))
    return 100.0 * out


def ball(points: np.ndarray, centre: Sequence[float], radius: float) -> np.ndarray:
    """Label 1 inside a ball, label 2 in a shell around it, 0 elsewhere."""
    r = np.linalg.norm(points - np.asarray(centre, float), axis=-1)
    return np.where(r <= radius, 1, np.where(r <= radius + 4, 2, 0))


def write_dicom_series(image: sitk.Image, folder: Path, series: int = 7) -> None:
    """Write ``image`` (int16) as one DICOM file per slice with the geometry tags a reader needs;
    ``series`` numbers the series (its UID and file names), so several can share a folder."""
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    series_tags = {"0020|000e": f"1.2.826.0.1.3680043.2.1125.1.{series}", "0020|000d": "1.2.826.0.1.3680043.2.1125.1.8",
                   "0008|0060": "CT", "0020|0037": "\\".join(f"{v:.8f}" for v in direction[0:9:3] + direction[1:9:3]),
                   "0018|0050": f"{image.GetSpacing()[2]}"}
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        for tag, value in series_tags.items():
            plane.SetMetaData(tag, value)
        plane.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        plane.SetMetaData("0020|0013", str(k + 1))
        plane.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.1.9.{series}.{k + 1}")
        writer.SetFileName(str(folder / f"series{series}-slice{k:03d}.dcm"))
        writer.Execute(plane)
