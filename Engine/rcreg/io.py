"""Reading and writing images, label maps, transforms and landmark points, keeping physical geometry.

Images are SimpleITK images (origin, spacing, direction in LPS mm, see docs/conventions.md). Every
reader checks its input and raises :class:`InputError` with one line naming the file; every writer
writes a temporary file beside the target and renames it, so nothing half-written is ever left.
"""
from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import SimpleITK as sitk

__all__ = [
    "InputError",
    "ImageLike",
    "read_image",
    "as_image",
    "check_image",
    "read_label_map",
    "same_grid",
    "write_image",
    "read_transform",
    "write_transform",
    "read_points",
    "write_points",
    "atomic_path",
]

ImageLike = Union[str, os.PathLike, sitk.Image, Any]  # Any: a nibabel spatial image

# SimpleITK copies these DICOM tags into the image's metadata when present (e.g. the modality).
_MODALITY_TAG = "0008|0060"


class InputError(ValueError):
    """An input file is missing, unreadable or unsuitable; the message is one line naming the file."""


def _from_nibabel(img: Any, name: str) -> sitk.Image:
    """Convert a nibabel spatial image (array in i, j, k order, RAS affine) to a SimpleITK image."""
    data = np.asanyarray(img.dataobj)
    if data.dtype == bool or data.dtype == np.float16:
        data = data.astype(np.uint8 if data.dtype == bool else np.float32)
    data = data.astype(data.dtype.newbyteorder("="), copy=False)  # e.g. big-endian MGH data
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{name}: expected a 3D scalar image, got array shape {data.shape}")
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(img.affine, dtype=float)  # RAS → LPS
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing == 0):
        raise InputError(f"{name}: degenerate affine (zero voxel size)")
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection((affine[:3, :3] / spacing).ravel().tolist())
    return image


def _read_dicom_folder(folder: Path) -> sitk.Image:
    """Read the (first, largest) DICOM series in ``folder``."""
    reader = sitk.ImageSeriesReader()
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM prints multi-line warnings for empty folders
    try:
        series = reader.GetGDCMSeriesIDs(str(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series")
    files = max((reader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot read DICOM series: {_first_line(exc)}") from None
    if reader.HasMetaDataKey(0, _MODALITY_TAG):
        image.SetMetaData(_MODALITY_TAG, reader.GetMetaData(0, _MODALITY_TAG).strip())
    return image


def _first_line(exc: BaseException) -> str:
    """The most useful single line of an exception message (SimpleITK's are multi-line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:  # ITK messages put the description after "Description:" / ": "
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__


def _read_any(path: Path) -> sitk.Image:
    """Read a file or DICOM folder with SimpleITK, falling back to nibabel for formats ITK lacks."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        return _read_dicom_folder(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        itk_error = _first_line(exc)
    import nibabel

    try:
        loaded = nibabel.load(str(path))
    except Exception:  # nibabel raises many types for files it does not know
        raise InputError(f"{path}: cannot read image ({itk_error})") from None
    return _from_nibabel(loaded, str(path))


def check_image(image: sitk.Image, name: str) -> sitk.Image:
    """Check that ``image`` is a 3D scalar image with finite, non-constant voxels; return it.

    Raises :class:`InputError` (one line, starting with ``name``) otherwise.
    """
    dim, size = image.GetDimension(), image.GetSize()
    if dim == 4 and size[3] == 1:  # a single-volume 4D file is a 3D image
        image = image[:, :, :, 0]
        dim, size = 3, image.GetSize()
    if dim != 3:
        raise InputError(f"{name}: expected a 3D image, got a {dim}D image of size {size}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    if min(size) < 2:
        raise InputError(f"{name}: expected a 3D volume, got size {size} (a single slice)")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"{name}: image has {int((~np.isfinite(array)).sum())} NaN or infinite voxels")
    if array.min() == array.max():
        raise InputError(f"{name}: image is constant (every voxel is {array.flat[0]})")
    return image


def read_image(path: ImageLike) -> sitk.Image:
    """Read a 3D scalar image: any file SimpleITK reads (NIfTI, NRRD, MHA/MHD, …), a DICOM series
    folder, or a file only nibabel reads; a nibabel image object is converted. Geometry is kept."""
    if hasattr(path, "affine") and hasattr(path, "dataobj"):
        return check_image(_from_nibabel(path, "<nibabel image>"), "<nibabel image>")
    path = Path(path)
    return check_image(_read_any(path), str(path))


def as_image(image: ImageLike, name: str = "<image>") -> sitk.Image:
    """``image`` if it is a SimpleITK image (checked as by :func:`read_image`), else read it."""
    if isinstance(image, sitk.Image):
        return check_image(image, name)
    return read_image(image)


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-3) -> bool:
    """Whether two images share size, spacing, direction and origin (within ``tolerance`` of a voxel)."""
    if a.GetSize() != b.GetSize():
        return False
    spacing_a, spacing_b = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    return (
        np.allclose(spacing_a, spacing_b, rtol=tolerance, atol=0)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
        and np.linalg.norm(np.subtract(a.GetOrigin(), b.GetOrigin())) <= tolerance * spacing_a.min()
    )


def read_label_map(path: ImageLike, reference: Optional[sitk.Image] = None) -> sitk.Image:
    """Read an integer label map (0 = background); if ``reference`` is given it must be on its grid.

    Float files are accepted when every voxel is an integer. Returns an unsigned integer image (the
    smallest of 8, 16, 32 bits that holds the labels) with ``reference``'s exact geometry (or its own
    when no reference is given).
    """
    name = "<label map>" if isinstance(path, sitk.Image) else str(path)
    image = path if isinstance(path, sitk.Image) else _read_any(Path(path))
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: expected a 3D scalar label map, got a {image.GetDimension()}D image "
                         f"with {image.GetNumberOfComponentsPerPixel()} components")
    array = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
        raise InputError(f"{name}: label map has non-integer values")
    if array.min() < 0:
        raise InputError(f"{name}: label map has negative labels (min {array.min()})")
    if reference is not None:
        if not same_grid(image, reference):
            raise InputError(
                f"{name}: label map is not on its image's grid (size {image.GetSize()} spacing "
                f"{_fmt(image.GetSpacing())} origin {_fmt(image.GetOrigin())} vs size {reference.GetSize()} "
                f"spacing {_fmt(reference.GetSpacing())} origin {_fmt(reference.GetOrigin())})"
            )
    top = array.max()
    labels = sitk.Cast(image, sitk.sitkUInt8 if top < 2 ** 8 else sitk.sitkUInt16 if top < 2 ** 16 else sitk.sitkUInt32)
    if reference is not None:
        labels.CopyInformation(reference)
    return labels


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def public_mode(directory: bool = False) -> int:
    """The permission bits a plain ``open``/``mkdir`` would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes, so writers pick the same format);
    it is renamed over ``path`` on success and removed on failure. Missing folders are created."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.name, dir=path.parent)
    except OSError as exc:
        raise OSError(f"{path}: cannot write ({exc.strerror or exc})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, public_mode())  # mkstemp creates 0600; give the file the usual umask-based mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_image(image: sitk.Image, path: str | os.PathLike, compression_level: int = 1) -> Path:
    """Write ``image`` atomically to ``path`` (format from the suffix; compressed where supported)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), True, compression_level)
        except RuntimeError as exc:
            raise OSError(f"{path}: cannot write image ({_first_line(exc)})") from None
    return path


def read_transform(path: str | os.PathLike) -> sitk.Transform:
    """Read a transform file (``.h5``, ``.tfm``, ``.mat``, ``.txt``) or a displacement-field image
    (vector image in LPS mm, e.g. ``displacement.nii.gz``) as a SimpleITK transform."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.suffix.lower() in (".h5", ".hdf5", ".tfm", ".mat", ".txt", ".xfm"):
        try:
            return sitk.ReadTransform(str(path))
        except RuntimeError as exc:
            raise InputError(f"{path}: cannot read transform ({_first_line(exc)})") from None
    field = _read_any(path)
    if field.GetDimension() == 4 and field.GetSize()[3] == 1:
        field = field[:, :, :, 0]
    if field.GetDimension() != 3 or field.GetNumberOfComponentsPerPixel() != 3:
        raise InputError(f"{path}: not a 3D displacement field (need 3 components per voxel, got "
                         f"{field.GetNumberOfComponentsPerPixel()} in a {field.GetDimension()}D image)")
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def write_transform(transform: sitk.Transform, path: str | os.PathLike) -> Path:
    """Write ``transform`` atomically (``.h5`` holds displacement fields)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            sitk.WriteTransform(transform, str(tmp))
        except RuntimeError as exc:
            raise OSError(f"{path}: cannot write transform ({_first_line(exc)})") from None
    return path


# Column names accepted for point coordinates, and whether they are RAS (Slicer) instead of LPS.
_POINT_COLUMNS = {("x", "y", "z"): False, ("l", "p", "s"): False, ("r", "a", "s"): True}


def read_points(path: str | os.PathLike) -> np.ndarray:
    """Read landmark points ``(N, 3)`` in LPS mm from a CSV file with a header.

    Columns ``x,y,z`` or ``l,p,s`` are LPS (ITK/ANTs); ``r,a,s`` columns, or ``x,y,z`` under a comment
    line ``# CoordinateSystem = RAS`` (Slicer), are converted from RAS. Other columns are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    ras_comment = False
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            lines = []
            for line in fh:
                if line.startswith("#"):
                    ras_comment |= "coordinatesystem" in line.lower().replace(" ", "") and "ras" in line.lower()
                    if "columns" in line.lower() and "=" in line:  # Slicer .fcsv: "# columns = id,x,y,z,…"
                        lines.append(line.split("=", 1)[1])
                    continue
                lines.append(line)
            rows = list(csv.reader(lines))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read points ({exc})") from None
    if not rows:
        raise InputError(f"{path}: no header line (need columns x,y,z)")
    header = [h.strip().lower() for h in rows[0]]
    for columns, ras in _POINT_COLUMNS.items():
        if all(c in header for c in columns):
            index = [header.index(c) for c in columns]
            ras = ras or ras_comment
            break
    else:
        raise InputError(f"{path}: header {rows[0]} lacks point columns x,y,z (LPS) or r,a,s (RAS)")
    try:
        points = np.array([[float(row[i]) for i in index] for row in rows[1:] if any(c.strip() for c in row)])
    except (ValueError, IndexError):
        raise InputError(f"{path}: non-numeric or missing point coordinates") from None
    points = points.reshape(-1, 3)
    if not np.isfinite(points).all():
        raise InputError(f"{path}: NaN or infinite point coordinates")
    return points * np.array([-1.0, -1.0, 1.0]) if ras else points


def write_points(points: np.ndarray, path: str | os.PathLike) -> Path:
    """Write points ``(N, 3)`` (LPS mm) as a CSV file with columns ``x,y,z``, atomically."""
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["x", "y", "z"])
            writer.writerows([[repr(float(v)) for v in p] for p in points])
    return path
