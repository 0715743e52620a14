"""The files a user picks on the page: listing a data folder and reading volumes and label maps with the
engine's own readers (``rcreg.io``), whose one-line errors the page shows."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import SimpleITK as sitk

__all__ = ["SUFFIXES", "MAX_LISTED", "list_files", "read_volume", "read_labels"]

#: File names offered from a data folder (what the engine's reader takes as single files).
SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Most files listed from a data folder (the first in path order).
MAX_LISTED = 1000


def list_files(folder: Optional[Path]) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted, at most :data:`MAX_LISTED`); none without a folder."""
    if folder is None:
        return []
    found = sorted(path for path in folder.rglob("*") if path.is_file() and path.name.lower().endswith(SUFFIXES))
    return found[:MAX_LISTED]


def _read(read, path: Path, role: str, *args) -> sitk.Image:
    """``read(path, *args)`` with its error as ``"<role>: <file name>: <reason>"`` (no temporary folder names)."""
    from ..cli import error_line
    from ..io import InputError

    try:
        return read(path, *args)
    except (InputError, OSError, RuntimeError) as error:
        raise ValueError(f"{role}: {error_line(error).replace(str(path), path.name)}") from None


def read_volume(path: Path, role: str) -> sitk.Image:
    """The 3D scalar image in ``path`` (checked by ``rcreg.io.read_image``); ``role`` names it in errors."""
    from ..io import read_image

    return _read(read_image, path, role)


def read_labels(path: Path, reference: sitk.Image, role: str) -> sitk.Image:
    """The label map in ``path``, which must lie on ``reference``'s grid (``rcreg.io.read_label_map``)."""
    from ..io import read_label_map

    return _read(read_label_map, path, role, reference)
