"""Fixtures for the training tests: a few tiny phantom subjects on disk and a tiny configuration."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from rcreg.training.config import TrainConfig
from rcreg.training.phantoms import write_phantoms

SHAPE = (24, 24, 24)


@pytest.fixture(scope="session")
def phantom_list(tmp_path_factory) -> Path:
    """CSV list (image, labels) of 5 phantom subjects, 24³ voxels of 2 mm."""
    return write_phantoms(tmp_path_factory.mktemp("phantoms"), 5, SHAPE, spacing=2.0, seed=1)


@pytest.fixture(scope="session")
def pair_list(phantom_list) -> Path:
    """CSV pair list (fixed, moving + labels) over the phantoms: (0, 1), (2, 3)."""
    path = phantom_list.parent / "pairs.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fixed", "moving", "fixed_labels", "moving_labels"])
        for a, b in ((0, 1), (2, 3)):
            writer.writerow([f"phantom{a:02d}.nii.gz", f"phantom{b:02d}.nii.gz",
                             f"phantom{a:02d}_labels.nii.gz", f"phantom{b:02d}_labels.nii.gz"])
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Preprocessed-volume cache shared by the tests (each volume is preprocessed once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_config(phantom_list, cache_dir, tmp_path):
    """A factory of small, fast configurations (24³ grid, narrow networks, no progress bar)."""

    def make(**overrides) -> TrainConfig:
        values = dict(train=str(phantom_list), val=str(phantom_list), grid=list(SHAPE), cascades=2, width=0.25,
                      batch_size=2, iterations=6, lr_steps=[4], save_every=3, val_every=3, log_every=1,
                      image_every=3, output=str(tmp_path / "run"), cache=str(cache_dir), progress=False,
                      tensorboard=False, threads=2, val_pairs=2)
        values.update(overrides)
        return TrainConfig(**values)

    return make
