"""Registering a cohort: many (moving, fixed) pairs with the model loaded once (``rcreg register --pairs``).

The pairs come from a pair list (``rcreg.datalists``: CSV or JSON, the format training and ``rcreg evaluate``
read): ``moving`` and ``fixed`` columns (paths, relative to the list's folder unless absolute), optional
``moving_labels``, ``fixed_labels``, ``mask`` and ``name`` (the pair's sub-folder; default: the row number
and the moving file's stem); other columns (landmarks) are ignored. Each pair's outputs go into
its own sub-folder of the output folder, written as one transaction (:meth:`RegistrationResult.save`),
so a pair whose folder holds ``metrics.json`` is finished and is skipped when the run is repeated —
an interrupted cohort resumes where it stopped. ``summary.csv`` lists every finished pair. Under
``torchrun`` (``RANK``/``WORLD_SIZE`` set) process r takes pairs r, r + W, r + 2W, …
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .datalists import read_pair_rows
from .io import InputError, as_image, atomic_path
from .models import resolve_model
from .registration import NO_MODEL, OUTPUT_FILES, model_for, register

__all__ = ["Pair", "read_pairs", "register_pairs", "SUMMARY_COLUMNS"]

_OPTIONAL = ("moving_labels", "fixed_labels", "mask")
_IMAGE_SUFFIX = re.compile(r"(\.nii)?\.gz$|\.[^.]+$")
#: Columns of ``summary.csv`` (metrics.json keys; ``name`` is the sub-folder).
SUMMARY_COLUMNS = ("name", "moving", "fixed", "model", "correlation_before", "correlation_after", "dice_mean_before",
                   "dice_mean", "folding_fraction", "seconds")


@dataclass(frozen=True)
class Pair:
    """One registration of a cohort: input paths and the name of its output sub-folder."""

    name: str
    moving: Path
    fixed: Path
    moving_labels: Optional[Path] = None
    fixed_labels: Optional[Path] = None
    mask: Optional[Path] = None


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Read a pair list (CSV or JSON, ``rcreg.datalists``): its ``moving``, ``fixed``, ``moving_labels``,
    ``fixed_labels``, ``mask`` and ``name`` columns; one-line :class:`InputError` naming the file otherwise."""
    pairs, names = [], set()
    for number, row in enumerate(read_pair_rows(path, _OPTIONAL), start=1):
        name = row.pop("name") or f"{number:04d}_{_IMAGE_SUFFIX.sub('', row['moving'].name)}"
        if "/" in name or name in (".", "..") or name in names:
            raise InputError(f"{path}: row {number}: pair name {name!r} is not a unique folder name")
        names.add(name)
        pairs.append(Pair(name=name, **row))
    return pairs


def _share(pairs: list[Pair]) -> list[Pair]:
    """This process's pairs under torchrun (every pair otherwise)."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return pairs[rank::world]


def _summary_row(pair: Pair, metrics: dict) -> dict:
    values = {**metrics, "name": pair.name, "moving": str(pair.moving), "fixed": str(pair.fixed),
              "seconds": round(sum((metrics.get("timings_s") or {}).values()), 3)}
    return {key: values.get(key, "") for key in SUMMARY_COLUMNS}


def _write_summary(pairs: list[Pair], output_dir: Path) -> Path:
    """``summary.csv`` from the metrics of every finished pair (all processes' pairs), written atomically."""
    path = output_dir / "summary.csv"
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            for pair in pairs:
                done = output_dir / pair.name / OUTPUT_FILES["metrics"]
                if done.is_file():
                    writer.writerow(_summary_row(pair, json.loads(done.read_text(encoding="utf-8"))))
    return path


def register_pairs(
    pairs: list[Pair],
    output_dir: str | os.PathLike,
    *,
    model=None,
    progress: Optional[Callable[[int, int, str], None]] = None,
    save_options: Optional[dict] = None,
    **register_options,
) -> Path:
    """Register every pair not finished yet into ``output_dir/<name>/`` and write ``summary.csv``.

    model: as :func:`rcreg.register` takes it (default: :func:`rcreg.registration.model_for` each pair's
    fixed image), each model resolved (checkpoint read) once for the whole cohort; ``register_options``:
    further :func:`rcreg.register` keywords; ``save_options``: :meth:`RegistrationResult.save` keywords.
    ``progress(done, total, message)`` after each pair.
    Returns the summary's path.
    """
    output_dir = Path(output_dir)
    mine = _share(pairs)
    resolved: dict[str, object] = {}
    report = progress or (lambda done, total, message: None)
    for number, pair in enumerate(mine, start=1):
        folder = output_dir / pair.name
        if (folder / OUTPUT_FILES["metrics"]).is_file():
            report(number, len(mine), f"{pair.name}: done earlier, skipped")
            continue
        start = time.perf_counter()
        name = model_for(as_image(pair.fixed, "fixed image")) if model is None else model
        spec = name
        if name != NO_MODEL:
            key = str(name)
            if key not in resolved:
                resolved[key] = resolve_model(name)
            spec = resolved[key]
        result = register(pair.moving, pair.fixed, model=spec, moving_labels=pair.moving_labels,
                          fixed_labels=pair.fixed_labels, mask=pair.mask, **register_options)
        result.save(folder, **(save_options or {}))
        report(number, len(mine), f"{pair.name}: correlation {result.metrics['correlation_before']:.3f} → "
                                  f"{result.metrics['correlation_after']:.3f} in {time.perf_counter() - start:.1f} s")
    return _write_summary(pairs, output_dir)


def print_progress(done: int, total: int, message: str) -> None:
    """A one-line text progress bar on stderr."""
    width = 24
    filled = width * done // max(total, 1)
    print(f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {message}", file=sys.stderr, flush=True)
