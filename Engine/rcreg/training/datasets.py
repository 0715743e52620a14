"""Training and validation data: image lists, registration pairs, and a cache of preprocessed volumes.

Image lists come from a folder, a glob pattern, a CSV file or a JSON file; each entry is an image with
an optional label map and landmark file (``rcreg.io.read_points`` format, LPS mm). Volumes are
preprocessed exactly as ``rcreg register`` does (``rcreg.preprocessing.preprocess`` with the model
card's grid and normalisation; label maps by nearest neighbour on the same grid) and cached on disk.
Tensors are on the network grid, axes in ITK index order (docs/conventions.md).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ..checkpoint import atomic_save
from ..datalists import listed_path, read_pair_rows, read_records
from ..io import InputError, read_points
from ..preprocessing import preprocess, preprocess_labels

__all__ = [
    "ImageEntry",
    "PairEntry",
    "read_image_list",
    "read_pair_list",
    "Volume",
    "VolumeCache",
    "Batch",
    "TrainingPairs",
]

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".img", ".hdr")
_PAIR_KEYS = ("fixed_labels", "moving_labels", "fixed_landmarks", "moving_landmarks")  # the optional columns used


@dataclass(frozen=True)
class ImageEntry:
    """One image file with its optional label map and landmark points."""

    image: Path
    labels: Optional[Path] = None
    landmarks: Optional[Path] = None

    @property
    def name(self) -> str:
        name = self.image.name
        for suffix in IMAGE_SUFFIXES:
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name


@dataclass(frozen=True)
class PairEntry:
    """An explicit (fixed, moving) pair."""

    fixed: ImageEntry
    moving: ImageEntry


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _sample_entries(spec: str) -> list[ImageEntry]:
    """Entries ``IMAGE[+LABELS],…`` of the project's sample data (``rcreg.data``), fetched if needed."""
    from .. import data

    items = [item.split("+") for item in spec.split(",") if item.strip()]
    if not items or any(len(item) > 2 for item in items):
        raise InputError(f"sample:{spec}: expected sample:IMAGE[+LABELS],… (names from `rcreg data list`)")
    paths = data.fetch([name.strip() for item in items for name in item])
    return [ImageEntry(paths[item[0].strip()], paths[item[1].strip()] if len(item) == 2 else None) for item in items]


def read_image_list(source: str | os.PathLike) -> list[ImageEntry]:
    """Entries of an image list: a folder (every image file in it and its subfolders), a glob pattern, a
    CSV or JSON list (key ``image``, optional ``labels`` and ``landmarks``), a text file of image paths
    (one a line; list paths are relative to the list's folder), one image, or ``sample:NAME[+LABELS],…``
    (the project's sample data, see ``rcreg data list``).

    Every named file is checked to exist; errors are one line naming the list and the file.
    """
    text = str(source)
    if text.startswith("sample:"):
        return _sample_entries(text[len("sample:"):])
    if any(c in text for c in "*?["):
        paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
        entries = [ImageEntry(p) for p in paths if _is_image(p)]
        if not entries:
            raise InputError(f"no image files match {text}")
        return entries
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"data list not found: {path}")
    if path.is_dir():
        entries = [ImageEntry(p) for p in sorted(path.rglob("*")) if _is_image(p)]
        if not entries:
            raise InputError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)}), nor do its subfolders")
        return entries
    if path.suffix.lower() not in (".csv", ".json", ".txt"):
        return [ImageEntry(path)]
    entries = []
    for row in read_records(path):
        if not row.get("image"):
            raise InputError(f"{path}: every entry needs an 'image' (columns: image, labels, landmarks)")
        entries.append(ImageEntry(*(listed_path(row.get(k), path.parent, path, k) for k in ("image", "labels", "landmarks"))))
    return entries


def read_pair_list(source: str | os.PathLike) -> list[PairEntry]:
    """Explicit pairs from a pair list (``rcreg.datalists``): ``fixed``, ``moving`` and optionally
    ``fixed_labels``, ``moving_labels``, ``fixed_landmarks``, ``moving_landmarks``."""
    return [PairEntry(ImageEntry(r["fixed"], r["fixed_labels"], r["fixed_landmarks"]),
                      ImageEntry(r["moving"], r["moving_labels"], r["moving_landmarks"]))
            for r in read_pair_rows(source, _PAIR_KEYS)]


@dataclass
class Volume:
    """A preprocessed volume on the network grid.

    image: ``(1, X, Y, Z)`` float32 in [0, 1]; labels: ``(1, X, Y, Z)`` int64 or None; grid: the
    network grid (an empty SimpleITK image with its geometry); landmarks: ``(N, 3)`` LPS mm or None.
    """

    name: str
    image: torch.Tensor
    grid: sitk.Image
    labels: Optional[torch.Tensor] = None
    landmarks: Optional[np.ndarray] = None


def _file_key(path: Optional[Path]) -> list:
    if path is None:
        return [None]
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _geometry(image: sitk.Image) -> dict:
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()),
            "origin": list(image.GetOrigin()), "direction": list(image.GetDirection())}


def _grid_from(geometry: dict) -> sitk.Image:
    grid = sitk.Image([int(n) for n in geometry["size"]], sitk.sitkUInt8)
    grid.SetSpacing(geometry["spacing"])
    grid.SetOrigin(geometry["origin"])
    grid.SetDirection(geometry["direction"])
    return grid


class VolumeCache:
    """Preprocess volumes once and keep them in ``folder`` as small torch files keyed by content.

    The key covers the image and label files (path, size, modification time), the card's grid and
    normalisation and the network grid, so a changed input is preprocessed again. With
    ``folder=None`` nothing is cached.
    """

    def __init__(self, folder: Optional[str | os.PathLike], card: dict):
        self.folder = Path(folder) if folder is not None else None
        self.card = {"grid": card["grid"], "normalization": card.get("normalization")}

    def _key(self, entry: ImageEntry, grid: Optional[sitk.Image]) -> str:
        parts = [_file_key(entry.image), _file_key(entry.labels), self.card,
                 _geometry(grid) if grid is not None else None]
        return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def load(self, entry: ImageEntry, grid: Optional[sitk.Image] = None) -> Volume:
        """The volume of ``entry`` on the network ``grid`` (or on its own), from the cache or preprocessed now."""
        path = self.folder / f"{entry.name}-{self._key(entry, grid)}.pt" if self.folder else None
        if path is not None and path.is_file():
            try:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # an unreadable cache file is simply rebuilt
                data = None
        else:
            data = None
        if data is None:
            image, grid = preprocess(entry.image, self.card, grid)
            labels = preprocess_labels(entry.labels, grid) if entry.labels else None
            data = {"image": image[0], "labels": labels[0] if labels is not None else None, "geometry": _geometry(grid)}
            if path is not None:
                atomic_save(data, path)
        landmarks = read_points(entry.landmarks) if entry.landmarks else None
        return Volume(entry.name, data["image"], _grid_from(data["geometry"]), data["labels"], landmarks)


@dataclass
class Batch:
    """A batch of pairs on the network grid: images ``(B, 1, X, Y, Z)``, labels ``(B, 1, X, Y, Z)`` int64 or None."""

    fixed: torch.Tensor
    moving: torch.Tensor
    fixed_labels: Optional[torch.Tensor] = None
    moving_labels: Optional[torch.Tensor] = None

    def to(self, device) -> "Batch":
        move = lambda t: t.to(device, non_blocking=True) if t is not None else None  # noqa: E731
        return Batch(move(self.fixed), move(self.moving), move(self.fixed_labels), move(self.moving_labels))


class TrainingPairs:
    """Random (fixed, moving) pairs of preprocessed volumes.

    ``pairs`` lists index pairs into ``volumes``; pairwise mode uses every ordered pair of distinct
    images of one list, atlas mode every (atlas, image), paired mode the given pairs.
    """

    def __init__(self, volumes: Sequence[Volume], pairs: Sequence[tuple[int, int]], with_labels: bool = False):
        if not pairs:
            raise InputError("no training pairs: pairwise mode needs at least 2 images")
        self.volumes = list(volumes)
        self.pairs = list(pairs)
        if with_labels:
            missing = sorted({self.volumes[i].name for p in self.pairs for i in p if self.volumes[i].labels is None})
            if missing:
                raise InputError(f"Dice supervision needs label maps; missing for {', '.join(missing[:3])}")
        self.with_labels = with_labels

    @staticmethod
    def pairwise(groups: Sequence[int]) -> list[tuple[int, int]]:
        """Every ordered pair of distinct images of one group (``groups[i]``: the group of image i)."""
        n = len(groups)
        return [(i, j) for i in range(n) for j in range(n) if i != j and groups[i] == groups[j]]

    def label_values(self) -> list[int]:
        """Sorted non-zero label values present in the training label maps."""
        values: set[int] = set()
        for v in self.volumes:
            if v.labels is not None:
                values.update(int(x) for x in torch.unique(v.labels) if x != 0)
        return sorted(values)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Draw ``batch_size`` pairs uniformly (with replacement) using ``generator``."""
        index = torch.randint(len(self.pairs), (batch_size,), generator=generator).tolist()
        chosen = [self.pairs[i] for i in index]
        stack = lambda k, attr: torch.stack([getattr(self.volumes[p[k]], attr) for p in chosen])  # noqa: E731
        if self.with_labels:
            return Batch(stack(0, "image"), stack(1, "image"), stack(0, "labels"), stack(1, "labels"))
        return Batch(stack(0, "image"), stack(1, "image"))
