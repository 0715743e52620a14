"""Reading and writing images, label maps, transforms and landmark points, keeping physical geometry.

Images are SimpleITK images (origin, spacing, direction in LPS mm, see docs/conventions.md). Every
reader checks its input and raises :class:`InputError` with one line naming the file; every writer
writes a temporary file beside the target and renames it, so nothing half-written is ever left.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import errno
import gzip
import os
import re
import stat
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional, Union

import numpy as np
import SimpleITK as sitk

__all__ = [
    "InputError",
    "ImageLike",
    "MIN_SIZE",
    "MAX_LABELS",
    "MODALITY_TAG",
    "LPS_FROM_RAS",
    "check_input_path",
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
    "array_ijk",
    "image_from_ijk",
    "check_output_folder",
    "process_alive",
    "remove_stale_temporaries",
]

ImageLike = Union[str, os.PathLike, sitk.Image, Any]  # Any: a nibabel spatial image

# SimpleITK copies these DICOM tags into the image's metadata when present (e.g. the modality).
MODALITY_TAG = "0008|0060"  # DICOM Modality (CT, MR, …), kept in an image's metadata
#: LPS ↔ RAS (the same matrix both ways): ITK and DICOM use LPS, NIfTI, Slicer and CSV points of 3D Slicer RAS.
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])

#: Fewest voxels along every axis of an image (smaller ones hold too little to register).
MIN_SIZE = 4
#: Most distinct non-zero labels in a label map (the metrics file holds three numbers per label).
MAX_LABELS = 100_000
#: Largest label value (label maps are stored as unsigned 32-bit integers at most).
MAX_LABEL_VALUE = 2 ** 32 - 1
#: Largest allowed deviation of a direction matrix's DᵀD from the identity (ITK's NIfTI writer
#: rewrites directions beyond about this).
DIRECTION_TOLERANCE = 1e-4

# What ITK's readers print or raise when a file's voxel data is shorter than its header declares,
# as (pattern, function of the matched numbers → (bytes expected, bytes found)).
_TRUNCATION_MESSAGES = (
    (re.compile(r"ideal = (\d+) : actual = (\d+)"), lambda ideal, actual: (ideal, actual)),  # MetaImage
    (re.compile(r"expected (\d+) bytes but received (\d+)"), lambda want, got: (want, got)),  # NRRD, gzip
    (re.compile(r"got only (\d+) (\d+)-sized things, not (\d+)"), lambda got, size, want: (want * size, got * size)),
    (re.compile(r"truncated file: eof = (\d+), .*stored_eof = (\d+)"), lambda eof, stored: (stored, eof)),  # HDF5
)
_TEMPORARY = ".tmp-"  # prefix of atomic_path's temporary files: .tmp-PID-RANDOMNAME
# What ITK's writers raise or print when the disk is full (HDF5 reports errno 28 = ENOSPC).
_NO_SPACE = re.compile(r"No space left on device|errno = 28")


class InputError(ValueError):
    """An input file is missing, unreadable or unsuitable; the message is one line naming the file."""


def _shown(path: Path) -> str:
    """``path`` as text, undecodable bytes shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _check_utf8(path: Path, error: type[Exception]) -> None:
    """Raise ``error`` if ``path`` has bytes that are not UTF-8: SimpleITK aborts the process on them."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{_shown(path)}: path is not valid UTF-8 (ITK cannot open it; rename it)") from None


def check_input_path(path: str | os.PathLike, folder: bool = False) -> Path:
    """``path`` as a :class:`~pathlib.Path` once it is known to be a readable regular file (or
    folder, if ``folder``) whose name ITK can take (UTF-8); else :class:`InputError`.

    Special files (FIFOs, devices, sockets) are refused: reading them may block forever.
    """
    path = Path(path)
    _check_utf8(path, InputError)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        if not folder:
            raise InputError(f"{path}: is a folder, not a file")
    elif not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise InputError(f"{path}: is {kind}, not a regular file")
    if not os.access(path, os.R_OK | (os.X_OK if stat.S_ISDIR(mode) else 0)):
        raise InputError(f"{path}: permission denied")
    return path


@contextlib.contextmanager
def _c_stderr() -> Iterator[list[str]]:
    """Capture what C/C++ libraries (ITK's MetaImage reader, GDCM) print on file descriptor 2; the
    lines are in the yielded list once the block ends."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                capture.seek(0)
                lines += capture.read().decode("utf-8", "replace").splitlines()
    finally:
        os.close(saved)


def _non_finite(name: str, count: int) -> InputError:
    return InputError(f"{name}: image has {count} NaN or infinite voxels")


def _truncated(path: Path, expected: int, found: Optional[int] = None) -> InputError:
    held = f"holds {found} of the" if found is not None else "ends before the"
    return InputError(f"{path}: truncated file ({held} {expected} bytes its header declares)")


def _check_truncation(path: Path, messages: list[str]) -> None:
    """Raise :func:`_truncated` if one of ITK's ``messages`` says the file is shorter than declared."""
    for line in messages:
        for pattern, sizes in _TRUNCATION_MESSAGES:
            match = pattern.search(line)
            if match:
                raise _truncated(path, *sizes(*(int(n) for n in match.groups())))


def _itk_call(call: Callable[[], Any]) -> tuple[Any, Optional[RuntimeError], list[str]]:
    """``call()`` with what ITK prints on stderr captured: ``(result, error or None, messages)``,
    the messages including the error's own lines."""
    result = error = None
    with _c_stderr() as printed:
        try:
            result = call()
        except RuntimeError as exc:
            error = exc
    return result, error, printed + (str(error).splitlines() if error is not None else [])


def _itk_write(call: Callable[[], Any], path: Path, what: str) -> None:
    """Run an ITK writer ``call`` writing ``path``; one-line :class:`OSError` when it fails, also when
    it only prints an error (the NIfTI writer on a full disk), saying so when the disk is full."""
    _, error, messages = _itk_call(call)
    problems = [line for line in messages if "ERROR" in line or _NO_SPACE.search(line)]
    if error is None and not problems:
        return
    disk = os.statvfs(path.parent)
    if any(_NO_SPACE.search(line) for line in messages) or disk.f_bavail * disk.f_frsize < 2 ** 20:
        raise OSError(f"{path}: cannot write {what} (no space left on device)")
    raise OSError(f"{path}: cannot write {what} ({_first_line(error) if error is not None else problems[0].strip(' *')})")


def _check_nifti_data(path: Path) -> bool:
    """Refuse a NIfTI file whose voxel data is shorter than its header declares, or holds NaN or
    infinite values: ITK's reader silently reads both as zeros. Float data: one streaming pass to the end of
    the file (a gzip file's CRC-32 is checked there, so corrupt data is refused too), little memory; integer
    data: the length only, from the file size or the gzip trailer when that settles it.

    Returns:
        Whether a gzip file's CRC-32 is still unchecked (integer data judged by its trailer): the caller
        runs :func:`_gzip_error` on it, beside ITK's read.
    """
    import nibabel

    try:
        loaded = nibabel.load(str(path))
        header, offset = loaded.header, int(loaded.dataobj.offset)  # the loaded header's vox_offset reads 0
    except Exception:  # a header nibabel does not read: ITK's reading stands, unless the stream is cut or corrupt
        if path.name.lower().endswith(".gz") and (problem := _gzip_error(path)) is not None:
            raise problem from None
        return False
    dtype = header.get_data_dtype()
    expected = int(np.prod(header.get_data_shape())) * dtype.itemsize
    if dtype.kind not in "fc" and _complete_without_reading(path, offset + expected):
        return path.name.lower().endswith(".gz")  # integer voxels cannot be NaN: the length settled the rest
    chunk = (1 << 24) // dtype.itemsize * dtype.itemsize
    found = bad = 0
    try:
        with nibabel.openers.ImageOpener(str(path)) as stream:
            stream.seek(offset)
            while found < expected:
                block = stream.read(min(chunk, expected - found))
                if not block:
                    break
                if dtype.kind in "fc":
                    values = np.frombuffer(block, dtype, count=len(block) // dtype.itemsize)
                    bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                found += len(block)
            while found >= expected and stream.read(chunk):  # to the end: gzip checks its CRC-32 there
                pass
    except EOFError:  # a compressed stream cut short
        raise _truncated(path, expected) from None
    except (OSError, zlib.error) as exc:
        raise _corrupt(path, exc) from None
    if found < expected:
        raise _truncated(path, expected, found)
    if bad:
        raise _non_finite(str(path), bad)
    return False


def _complete_without_reading(path: Path, length: int) -> bool:
    """Whether ``path`` holds (at least) ``length`` bytes of data, judged without decompressing it: an
    uncompressed file by its size; a gzip file by the uncompressed size its trailer records (mod 2³², of its
    last member only), which a cut file does not end with. ``False`` means "read it to know"."""
    size = path.stat().st_size
    if not path.name.lower().endswith(".gz"):
        return size >= length
    if size < 18:  # a gzip header and trailer
        return False
    with open(path, "rb") as stream:
        if stream.read(2) != b"\x1f\x8b":
            return False
        stream.seek(-4, os.SEEK_END)
        return int.from_bytes(stream.read(4), "little") == length % 2 ** 32


def _gzip_error(path: Path) -> Optional[InputError]:
    """Read the gzip stream in ``path`` to its end, where its CRC-32 and length are checked: the error of a
    stream cut short or corrupt, else ``None`` (also for a file that is not gzip at all: its reader says
    what it is). Little memory; zlib releases the GIL."""
    try:
        with open(path, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":
                return None
        with gzip.open(path) as stream:
            while stream.read(1 << 24):
                pass
    except EOFError:
        return InputError(f"{path}: truncated file (its compressed data ends early)")
    except (OSError, zlib.error) as exc:
        return _corrupt(path, exc)
    return None


def _corrupt(path: Path, exc: BaseException) -> InputError:
    return InputError(f"{path}: corrupt compressed data ({_first_line(exc)})")


def _read_file(path: Path) -> sitk.Image:
    """Read an image file with SimpleITK (NIfTI data checked by :func:`_check_nifti_data`), falling
    back to nibabel for formats ITK lacks."""
    unchecked = path.name.lower().endswith((".nii", ".nii.gz")) and _check_nifti_data(path)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the gzip check costs no time beside ITK's read
        stream_error = pool.submit(_gzip_error, path) if unchecked else None
        image, error, messages = _itk_call(lambda: sitk.ReadImage(str(path)))
        if stream_error is not None and (problem := stream_error.result()) is not None:
            raise problem
    if error is None:
        return image
    _check_truncation(path, messages)
    if path.suffix.lower() == ".gz" and not unchecked and (problem := _gzip_error(path)) is not None:
        raise problem
    if "determinant is 0" in str(error):
        raise InputError(f"{path}: direction matrix is singular (determinant 0)")
    import nibabel

    try:
        loaded = nibabel.load(str(path))
    except Exception:  # nibabel raises many types for files it does not know
        raise InputError(f"{path}: cannot read image ({_first_line(error)})") from None
    return _from_nibabel(loaded, str(path))


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
    affine = np.asarray(img.affine, dtype=float)
    affine[:3] = LPS_FROM_RAS @ affine[:3]  # RAS → LPS
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing == 0):
        raise InputError(f"{name}: degenerate affine (zero voxel size)")
    direction = affine[:3, :3] / spacing
    _check_direction(direction, name)
    image = image_from_ijk(data)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    image.SetDirection(direction.ravel().tolist())
    return image


def _read_dicom_folder(folder: Path) -> sitk.Image:
    """Read the DICOM series in ``folder`` (refused if it holds several)."""
    reader = sitk.ImageSeriesReader()
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM prints multi-line warnings for empty folders
    try:
        series = reader.GetGDCMSeriesIDs(str(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series")
    if len(series) > 1:
        found = "; ".join(f"{s} ({len(reader.GetGDCMSeriesFileNames(str(folder), s))} files)" for s in series)
        raise InputError(f"{folder}: folder holds {len(series)} DICOM series, give each its own folder: {found}")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot read DICOM series: {_first_line(exc)}") from None
    if reader.HasMetaDataKey(0, MODALITY_TAG):
        image.SetMetaData(MODALITY_TAG, reader.GetMetaData(0, MODALITY_TAG).strip())
    return image


# "ITK ERROR: TxtTransformIOTemplate(0x5621…): " before the description of ITK's errors.
_ITK_PREFIX = re.compile(r"^ITK ERROR: \w+\(0x[0-9a-f]+\): ")


def _first_line(exc: BaseException) -> str:
    """The most useful single line of an exception message (SimpleITK's are multi-line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:  # ITK messages put the description after "Description:" / ": "
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()
    return _ITK_PREFIX.sub("", lines[-1]) if lines else type(exc).__name__


def _read_any(path: Path) -> sitk.Image:
    """Read a file or DICOM folder (see :func:`check_input_path`, :func:`_read_file`)."""
    path = check_input_path(path, folder=True)
    return _read_dicom_folder(path) if path.is_dir() else _read_file(path)


def _check_direction(direction: Any, name: str) -> None:
    """Refuse a singular or non-orthonormal (sheared) 3×3 ``direction`` matrix: ITK resamples and
    writes assuming orthonormal axes, so outputs would not match the input's geometry."""
    direction = np.asarray(direction, dtype=float).reshape(3, 3)
    if abs(np.linalg.det(direction)) < 1e-6:
        raise InputError(f"{name}: direction matrix is singular ({_fmt(direction.ravel())})")
    deviation = float(np.abs(direction.T @ direction - np.eye(3)).max())
    if deviation > DIRECTION_TOLERANCE:
        raise InputError(f"{name}: direction matrix is not orthonormal (axes sheared: |DᵀD − I| up to "
                         f"{deviation:.2g}, tolerance {DIRECTION_TOLERANCE:g}); resample it onto an orthogonal grid")


def check_image(image: sitk.Image, name: str) -> sitk.Image:
    """Check that ``image`` is a 3D scalar image of at least :data:`MIN_SIZE` voxels per axis, with an
    orthonormal direction and finite, non-constant voxels; return it.

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
    if min(size) < MIN_SIZE:
        raise InputError(f"{name}: image is too small: size {size}, need at least {MIN_SIZE} voxels along every axis")
    _check_direction(image.GetDirection(), name)
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise _non_finite(name, int((~np.isfinite(array)).sum()))
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


def array_ijk(image: sitk.Image, *, view: bool = False) -> np.ndarray:
    """The voxels of ``image`` in ITK index order: ``(I, J, K)``, or ``(I, J, K, C)`` for vector images
    (SimpleITK's own arrays are ``(K, J, I[, C])``; docs/conventions.md). A copy; ``view=True`` gives a
    read-only view instead, valid only while ``image`` is alive."""
    array = sitk.GetArrayViewFromImage(image) if view else sitk.GetArrayFromImage(image)
    return array.transpose(2, 1, 0, 3) if array.ndim == 4 else array.transpose(2, 1, 0)


def image_from_ijk(array: np.ndarray, like: Optional[sitk.Image] = None) -> sitk.Image:
    """A SimpleITK image from voxels in ITK index order ``(I, J, K)``, or a vector image from ``(I, J, K, C)``
    (:func:`array_ijk`'s inverse), with ``like``'s geometry when given."""
    array = np.asarray(array)
    vector = array.ndim == 4
    order = (2, 1, 0, 3) if vector else (2, 1, 0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(order)), isVector=vector)
    if like is not None:
        image.CopyInformation(like)
    return image


def read_label_map(path: ImageLike, reference: Optional[sitk.Image] = None) -> sitk.Image:
    """Read an integer label map (0 = background); if ``reference`` is given it must be on its grid.

    Float files are accepted when every voxel is an integer; values must fit 32 bits and there may
    be at most :data:`MAX_LABELS` distinct non-zero labels. Returns an unsigned integer image (the
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
    _check_direction(image.GetDirection(), name)
    array = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
        raise InputError(f"{name}: label map has non-integer values")
    if array.min() < 0:
        raise InputError(f"{name}: label map has negative labels (min {array.min()})")
    top = array.max()
    if top > MAX_LABEL_VALUE:
        raise InputError(f"{name}: label values up to {int(top)} do not fit 32 bits (max {MAX_LABEL_VALUE})")
    if top > MAX_LABELS:  # only then can there be more labels than allowed
        count = int(np.count_nonzero(np.unique(array)))
        if count > MAX_LABELS:
            raise InputError(f"{name}: label map has {count} distinct labels, more than the {MAX_LABELS} supported")
    if reference is not None:
        if not same_grid(image, reference):
            raise InputError(
                f"{name}: label map is not on its image's grid (size {image.GetSize()} spacing "
                f"{_fmt(image.GetSpacing())} origin {_fmt(image.GetOrigin())} vs size {reference.GetSize()} "
                f"spacing {_fmt(reference.GetSpacing())} origin {_fmt(reference.GetOrigin())})"
            )
    labels = sitk.Cast(image, sitk.sitkUInt8 if top < 2 ** 8 else sitk.sitkUInt16 if top < 2 ** 16 else sitk.sitkUInt32)
    if reference is not None:
        labels.CopyInformation(reference)
    return labels


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def check_output_folder(path: str | os.PathLike, name: str = "output folder") -> Path:
    """Refuse an output folder that cannot be written, before any work: an empty path, an existing
    file, a folder (or the nearest existing parent) without write permission. ``name``: the option's
    name in the calling interface, for the message."""
    if not str(path).strip():
        raise InputError(f"{name} is empty: give a folder for the results")
    path = Path(path)
    _check_utf8(path, InputError)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder ({name})")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{path}: cannot create output folder, {existing} is a file ({name})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{existing}: permission denied, cannot write {name}")
    return path


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
    _check_utf8(path, OSError)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{_TEMPORARY}{os.getpid()}-", suffix=path.name, dir=path.parent)
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


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine), whoever owns it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` left in ``folder`` when its process was killed
    (SIGKILL gives no chance to clean up): those whose name (``.tmp-PID-…``) names no running process.
    Files of live processes — another run sharing a preprocessing cache — are kept. Returns what was removed."""
    removed = []
    for path in Path(folder).glob(_TEMPORARY + "*"):
        pid = path.name[len(_TEMPORARY):].split("-", 1)[0]
        if path.is_file() and not (pid.isdigit() and process_alive(int(pid))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _compression_workers() -> int:
    """Threads for compressing on every core this process may run on (its CPU affinity), at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


def _gzip_parallel(source: BinaryIO, out: BinaryIO, level: int, block: int = 1 << 22) -> None:
    """Copy ``source`` to ``out`` as one gzip member, compressing ``block``-byte pieces on up to 8 cores (zlib
    releases the GIL) with at most twice as many pieces in flight, so memory stays bounded whatever the size.

    Each piece is raw deflate primed with the 32 KiB before it and ended by a full flush on a byte
    boundary, so the pieces join into one deflate stream (pigz's scheme): the file is an ordinary
    single-member gzip whose trailer holds the CRC-32 and length of the whole data."""
    def piece(data: bytes, primer: bytes, last: bool) -> bytes:
        deflate = zlib.compressobj(level, zlib.DEFLATED, -15, **({"zdict": primer} if primer else {}))
        return deflate.compress(data) + deflate.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)

    workers = _compression_workers()
    out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # deflate, no name, no mtime, unknown OS
    crc = length = 0
    pending: list[concurrent.futures.Future] = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        data, primer = source.read(block), b""
        while True:
            following = source.read(block)
            crc, length = zlib.crc32(data, crc), length + len(data)
            pending.append(pool.submit(piece, data, primer, not following))
            if len(pending) > 2 * workers:
                out.write(pending.pop(0).result())
            if not following:
                break
            data, primer = following, data[-32768:]
        for future in pending:
            out.write(future.result())
    out.write(struct.pack("<II", crc, length & 0xFFFFFFFF))


def write_image(image: sitk.Image, path: str | os.PathLike, compression_level: int = 1) -> Path:
    """Write ``image`` atomically to ``path`` (format from the suffix; compressed where supported).

    ``.nii.gz``: ITK writes the NIfTI file uncompressed beside it (so the folder briefly needs room for both)
    and :func:`_gzip_parallel` compresses it (a 256³ int16 image 0.8 → 0.2 s on 2 cores: ITK's own gzip
    writes through small buffers on one core)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if not path.name.lower().endswith(".nii.gz"):
            _itk_write(lambda: sitk.WriteImage(image, str(tmp), True, compression_level), path, "image")
            return path
        plain = tmp.with_name(tmp.name[:-3])
        try:
            _itk_write(lambda: sitk.WriteImage(image, str(plain), False), path, "image")
            try:
                with open(plain, "rb") as source, open(tmp, "wb") as out:
                    _gzip_parallel(source, out, compression_level)
            except (OSError, zlib.error) as exc:
                raise _write_error(path, "image", exc) from None
        finally:
            plain.unlink(missing_ok=True)
    return path


def _write_error(path: Path, what: str, exc: BaseException) -> OSError:
    """The one-line error of a failed write of ``what`` to ``path``."""
    reason = ("no space left on device" if getattr(exc, "errno", None) == errno.ENOSPC
              or "No space left" in str(exc) else getattr(exc, "strerror", None) or _first_line(exc))
    return OSError(f"{path}: cannot write {what} ({reason})")


def read_transform(path: str | os.PathLike) -> sitk.Transform:
    """Read a transform file (``.h5``, ``.tfm``, ``.mat``, ``.txt``) or a displacement-field image
    (vector image in LPS mm, e.g. ``displacement.nii.gz``) as a SimpleITK transform."""
    path = check_input_path(path)
    if path.suffix.lower() in (".h5", ".hdf5", ".tfm", ".mat", ".txt", ".xfm"):
        transform, error, messages = _itk_call(lambda: sitk.ReadTransform(str(path)))
        if error is None:
            return transform
        _check_truncation(path, messages)
        if "Could not create Transform IO object" in str(error):
            raise InputError(f"{path}: not a transform file (ITK reads HDF5 .h5, text .tfm/.txt and Matlab .mat "
                             f"transforms)") from None
        raise InputError(f"{path}: cannot read transform ({_first_line(error)})") from None
    field = _read_file(path)
    if field.GetDimension() == 4 and field.GetSize()[3] == 1:
        field = field[:, :, :, 0]
    if field.GetDimension() != 3 or field.GetNumberOfComponentsPerPixel() != 3:
        raise InputError(f"{path}: not a 3D displacement field (need 3 components per voxel, got "
                         f"{field.GetNumberOfComponentsPerPixel()} in a {field.GetDimension()}D image)")
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def write_transform(transform: sitk.Transform, path: str | os.PathLike) -> Path:
    """Write ``transform`` atomically (format from the suffix; ``.h5`` holds displacement fields).

    ``.h5`` (ITK's HDF5 transform format): ITK writes the file beside it, then :func:`_compact_h5_transform`
    stores its displacement fields as compressed float32 (42 % of ITK's own float64 size on smooth fields;
    0.07 s for 80×80×88 vectors on 2 cores, 0.06 s more than ITK's write alone); ITK, ANTs and Slicer read
    them into their float64 transforms. Without h5py (optional in Slicer's Python) ITK's file is kept."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() not in (".h5", ".hdf5") or not _h5py_works():
            _itk_write(lambda: sitk.WriteTransform(transform, str(tmp)), path, "transform")
            return path
        plain = tmp.with_name(f"{tmp.stem}.itk{tmp.suffix}")
        try:
            _itk_write(lambda: sitk.WriteTransform(transform, str(plain)), path, "transform")
            try:
                _compact_h5_transform(plain, tmp)
            except (OSError, RuntimeError) as exc:  # h5py raises either when the disk fills
                raise _write_error(path, "transform", exc) from None
        finally:
            plain.unlink(missing_ok=True)
    return path


_H5_CHUNK = 1 << 18  # float32 values (1 MiB) per compressed chunk of a stored field


def _h5py_works() -> bool:
    """Whether h5py imports (installed and built for this NumPy)."""
    try:
        import h5py  # noqa: F401
    except ImportError:
        return False
    return True


def _compact_h5_transform(source: Path, target: Path) -> None:
    """Copy the ITK HDF5 transform file ``source`` to ``target``, the parameters of every displacement-field
    transform (``TransformGroup/N/TransformParameters``: the field's vectors, mm) as float32 under HDF5's
    shuffle and gzip filters; everything else as it is. The fields are rounded to float32 (1e-7 relative:
    the engine computes them in float32 before converting to mm in float64); ITK's reader converts a float32
    dataset to its parameter type. The chunks are filtered here, on every core (HDF5 would compress them one
    by one), and deflated with Huffman coding only: on shuffled floats LZ77 matching finds next to nothing
    and costs 2.5× the time for the same size."""
    import h5py

    with h5py.File(source, "r") as src, h5py.File(target, "w") as out:
        for name, item in src.items():
            if name != "TransformGroup":
                src.copy(item, out, name)
                continue
            for index, group in item.items():
                copy = out.create_group(f"TransformGroup/{index}")
                kind = group["TransformType"][0]
                field = (kind.decode() if isinstance(kind, bytes) else str(kind)).startswith("DisplacementField")
                for key, dataset in group.items():
                    if not (field and key == "TransformParameters" and dataset.size):
                        group.copy(dataset, copy, key)
                        continue
                    values = dataset[()].astype(np.float32)
                    chunk = min(values.size, _H5_CHUNK)
                    stored = copy.create_dataset(key, values.shape, np.float32, chunks=(chunk,), shuffle=True,
                                                 compression="gzip")
                    with concurrent.futures.ThreadPoolExecutor(_compression_workers()) as pool:
                        starts = range(0, values.size, chunk)
                        pieces = pool.map(_shuffle_deflate, (values[s:s + chunk] for s in starts), [chunk] * len(starts))
                        for start, data in zip(starts, pieces):
                            stored.id.write_direct_chunk((start,), data)


def _shuffle_deflate(values: np.ndarray, length: int) -> bytes:
    """One HDF5 chunk of ``length`` float32 values (``values`` zero-padded to it) through the shuffle
    filter (byte k of every value, for k = 0…3) and the deflate filter (a zlib stream, Huffman-coded)."""
    padded = np.zeros(length, np.float32)
    padded[: values.size] = values
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    return compressor.compress(padded.view(np.uint8).reshape(-1, 4).T.tobytes()) + compressor.flush()


# Column names accepted for point coordinates, and whether they are RAS (Slicer) instead of LPS.
_POINT_COLUMNS = {("x", "y", "z"): False, ("l", "p", "s"): False, ("r", "a", "s"): True}


def read_points(path: str | os.PathLike) -> np.ndarray:
    """Read landmark points ``(N, 3)`` in LPS mm from a CSV file with a header.

    Columns ``x,y,z`` or ``l,p,s`` are LPS (ITK/ANTs); ``r,a,s`` columns, or ``x,y,z`` under a comment
    line ``# CoordinateSystem = RAS`` (Slicer), are converted from RAS. Other columns are ignored.
    """
    path = check_input_path(path)
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
    return points @ LPS_FROM_RAS if ras else points


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
