"""Data lists: the files that name images and pairs of images (no torch).

One format serves every reader — training's ``train``/``val`` lists (``rcreg.training.datasets``),
``rcreg evaluate --pairs`` and ``rcreg register --pairs`` (``rcreg.cohort``): a CSV file with a header
(column names case-insensitive, ``#`` lines skipped), a JSON list of objects (or of paths; or an object
with an ``images`` or ``pairs`` list), or for image lists a text file with one path a line (VoxelMorph's).
Paths are relative to the list's folder unless absolute. A *pair list* has ``moving`` and ``fixed``
columns; each reader takes the optional columns it knows (:data:`PAIR_COLUMNS`) and ignores the rest,
so one pair list can be trained on, evaluated and registered.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Optional, Sequence

from .io import InputError, check_input_path

__all__ = ["PAIR_COLUMNS", "read_records", "listed_path", "read_pair_rows"]

#: Path columns of a pair list: required first, then optional (labels, landmarks, the registration mask).
PAIR_COLUMNS = ("moving", "fixed", "moving_labels", "fixed_labels", "moving_landmarks", "fixed_landmarks", "mask")


def read_records(source: Path) -> list[dict]:
    """Rows of a CSV file (with a header), entries of a JSON list or lines of a text file, as dictionaries
    (a text line or a JSON string becomes ``{"image": path}``); one-line :class:`InputError` naming the file."""
    try:
        if source.suffix.lower() == ".txt":
            lines = (line.strip() for line in source.read_text(encoding="utf-8").splitlines())
            rows = [{"image": line} for line in lines if line and not line.startswith("#")]
        elif source.suffix.lower() == ".csv":
            with open(source, newline="", encoding="utf-8") as fh:
                rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                        for row in csv.DictReader(line for line in fh if not line.startswith("#"))]
        else:
            data = json.loads(source.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data = data.get("pairs", data.get("images"))
            if not isinstance(data, list):
                raise InputError(f"{source}: expected a JSON list (or an object with 'images' or 'pairs')")
            rows = [{"image": d} if isinstance(d, str) else d for d in data]
            if not all(isinstance(r, dict) for r in rows):
                raise InputError(f"{source}: every JSON entry must be a path or an object")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise InputError(f"{source}: cannot read data list ({str(exc).splitlines()[0]})") from None
    if not rows:
        raise InputError(f"{source}: data list is empty")
    return rows


def listed_path(value: Optional[str], base: Path, source: Path, column: str) -> Optional[Path]:
    """``value`` resolved relative to ``base`` (None when empty); one-line error naming the list if it is missing."""
    if value is None or str(value).strip() == "":
        return None
    path = Path(str(value).strip()).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise InputError(f"{source}: {column} file not found: {path}")
    return path


def read_pair_rows(source: str | os.PathLike, optional: Sequence[str]) -> list[dict]:
    """The rows of a pair list: per row ``{column: Path or None}`` for ``moving``, ``fixed`` and the
    ``optional`` columns the caller uses (a subset of :data:`PAIR_COLUMNS`; every listed file checked to
    exist), plus the row's ``name`` (stripped; ``""`` if none)."""
    unknown = set(optional) - set(PAIR_COLUMNS[2:])
    if unknown:
        raise ValueError(f"not optional pair-list columns: {', '.join(sorted(unknown))}")
    path = check_input_path(Path(source).expanduser())
    if path.suffix.lower() not in (".csv", ".json"):
        raise InputError(f"{path}: a pair list must be a CSV or JSON file with columns moving, fixed")
    rows = []
    for number, row in enumerate(read_records(path), start=1):
        if not str(row.get("moving") or "").strip() or not str(row.get("fixed") or "").strip():
            raise InputError(f"{path}: pair {number} needs 'moving' and 'fixed' paths (columns: {', '.join(sorted(row))})")
        rows.append({**{c: listed_path(row.get(c), path.parent, path, c) for c in ("moving", "fixed", *optional)},
                     "name": str(row.get("name") or "").strip()})
    return rows
