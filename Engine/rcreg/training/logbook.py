"""Training logs: CSV files (always) and TensorBoard scalars and image slices (when installed).

Only the main process of a distributed run creates a :class:`TrainingLog`.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Optional

import torch

__all__ = ["TrainingLog"]


class TrainingLog:
    """Append scalars to ``folder/<kind>_log.csv`` and, if enabled, to TensorBoard in ``folder/tensorboard``.

    ``resume_step``: when resuming, rows logged after that step (by the interrupted run, past its last
    checkpoint) are dropped so the logs continue seamlessly.
    """

    def __init__(self, folder: str | Path, tensorboard: bool = True, resume_step: Optional[int] = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fields: dict[str, list[str]] = {}
        for path in self.folder.glob("*_log.csv"):
            if resume_step is None:
                path.unlink()
            else:
                self._truncate(path, resume_step)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("TensorBoard logging is off: the tensorboard package is not installed "
                      "(pip install tensorboard); CSV logs are still written", file=sys.stderr)
            else:
                self.writer = SummaryWriter(str(self.folder / "tensorboard"), purge_step=resume_step)

    @staticmethod
    def _truncate(path: Path, step: int) -> None:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        keep = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= step]
        with open(path, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(keep)

    def scalars(self, kind: str, step: int, values: dict[str, float]) -> None:
        """Log ``values`` under ``kind`` (e.g. ``train``, ``val``) at ``step``."""
        path = self.folder / f"{kind}_log.csv"
        if kind not in self._fields:
            if path.is_file() and path.stat().st_size:
                with open(path, newline="", encoding="utf-8") as fh:
                    self._fields[kind] = next(csv.reader(fh))
            else:
                self._fields[kind] = ["step", *values]
                with open(path, "w", newline="", encoding="utf-8") as fh:
                    csv.writer(fh).writerow(self._fields[kind])
        with open(path, "a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow([step, *(f"{values.get(k, float('nan')):.6g}" for k in self._fields[kind][1:])])
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{kind}/{name}", value, step)

    def images(self, step: int, **volumes: torch.Tensor) -> None:
        """Middle slices (last axis) of volumes ``(X, Y, Z)`` side by side, as one TensorBoard image."""
        if self.writer is None:
            return
        slices = [v.detach().float().cpu()[:, :, v.shape[-1] // 2].clamp(0, 1).T.flip(0) for v in volumes.values()]
        self.writer.add_image("/".join(volumes), torch.cat(slices, dim=1).unsqueeze(0), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
