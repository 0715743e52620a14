"""Fixtures for the training tests: a few tiny phantom subjects on disk and a tiny configuration."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from rcreg.metrics import dice, mean_score

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


@pytest.fixture
def shifted_pair(phantom_list, tmp_path):
    """A pair list (phantom00, the same subject moved 3 voxels = 6 mm along x, with landmarks moved
    alike) and the unregistered mean Dice of its labels on the fixed grid."""
    folder = phantom_list.parent
    for suffix in ("", "_labels"):
        image = sitk.ReadImage(str(folder / f"phantom00{suffix}.nii.gz"))
        image.SetOrigin([image.GetOrigin()[0] + 6.0, *image.GetOrigin()[1:]])
        sitk.WriteImage(image, str(tmp_path / f"shifted{suffix}.nii.gz"))
    points = np.array([[0.0, 0.0, 0.0], [-5.0, 4.0, 2.0], [7.0, -3.0, -6.0]])
    np.savetxt(tmp_path / "fixed_points.csv", points, delimiter=",", header="x,y,z", comments="")
    np.savetxt(tmp_path / "moving_points.csv", points + [6.0, 0.0, 0.0], delimiter=",", header="x,y,z", comments="")
    listing = tmp_path / "pairs.csv"
    listing.write_text("fixed,moving,fixed_labels,moving_labels,fixed_landmarks,moving_landmarks\n"
                       f"{folder / 'phantom00.nii.gz'},shifted.nii.gz,{folder / 'phantom00_labels.nii.gz'},"
                       "shifted_labels.nii.gz,fixed_points.csv,moving_points.csv\n")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "phantom00_labels.nii.gz"))).transpose(2, 1, 0)
    on_fixed_grid = np.zeros_like(labels)  # moving(x) = labels(x − 3 voxels) on the fixed grid
    on_fixed_grid[3:] = labels[:-3]
    return listing, mean_score(dice(on_fixed_grid, labels))
