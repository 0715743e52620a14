"""Scoring: landmark mapping against the grid's affine geometry; `rcreg evaluate` against analytic numbers."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from rcreg.cascade import RecursiveCascadeNetwork
from rcreg.checkpoint import save_checkpoint
from rcreg.cli import main
from rcreg.training.datasets import Volume
from rcreg.training.evaluation import map_landmarks


def test_map_landmarks_constant_flow_in_oblique_grid():
    reference = sitk.Image([10, 12, 14], sitk.sitkUInt8)
    angle = np.radians(30)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    reference.SetDirection(direction.ravel().tolist())
    reference.SetSpacing([2.0, 1.5, 3.0])
    reference.SetOrigin([10.0, -4.0, 7.0])
    volume = Volume("grid", torch.zeros(1, 10, 12, 14), reference)
    shift = np.array([1.0, -2.0, 0.5])  # voxels
    flow = torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, 10, 12, 14)
    index = np.array([[2.0, 3.5, 4.0], [7.25, 1.0, 9.0]])
    points = np.array([10.0, -4.0, 7.0]) + (direction @ np.diag([2.0, 1.5, 3.0]) @ index.T).T
    expected = points + direction @ np.diag([2.0, 1.5, 3.0]) @ shift
    np.testing.assert_allclose(map_landmarks(flow, volume, points), expected, atol=1e-4)


def test_evaluate_identity_model_gives_unregistered_scores(shifted_pair, tmp_path, capsys):
    listing, unregistered_dice = shifted_pair
    identity = RecursiveCascadeNetwork("vtn", n_cascades=0, affine=True, width=0.25)  # affine head starts at I
    card = {"name": "identity", "grid": {"shape": [24, 24, 24]}, "normalization": {"type": "window", "min": 0, "max": 1}}
    model = save_checkpoint(tmp_path / "identity.pt", identity, card)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model), "--pairs", str(listing), "--repeats", "2", "--output", str(out),
                 "--device", "cpu"]) == 0
    with open(out / "evaluation.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["repeat"] for r in rows] == ["1", "2"]
    for row in rows:
        assert float(row["dice"]) == pytest.approx(unregistered_dice, abs=1e-9)
        assert float(row["landmark_error"]) == pytest.approx(6.0, abs=1e-3)  # the 6 mm shift, unregistered
        assert float(row["folding_fraction"]) == 0.0 and float(row["sdlogj"]) == pytest.approx(0.0, abs=1e-6)
        assert float(row["hd95"]) > 0 and float(row["time_s"]) > 0
        # the pair as given, scored beside it: the identity model changes nothing
        assert float(row["unregistered_dice"]) == pytest.approx(unregistered_dice, abs=1e-9)
        assert float(row["unregistered_landmark_error"]) == pytest.approx(6.0, abs=1e-3)
        assert float(row["unregistered_correlation"]) == pytest.approx(float(row["correlation"]), abs=1e-6)
    assert "worse than without registration" not in capsys.readouterr().err
    with open(out / "labels.csv", newline="") as fh:
        assert {r["label"] for r in csv.DictReader(fh)} == {"1", "2", "3"}
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))["summary"]
    assert summary["r=2"]["dice"]["n"] == 1 and summary["r=1"]["landmark_error"]["mean"] == pytest.approx(6.0, abs=1e-3)


def test_evaluate_warns_when_a_model_makes_pairs_worse_than_no_registration(shifted_pair, tmp_path, capsys):
    listing, unregistered_dice = shifted_pair
    worse = RecursiveCascadeNetwork("vtn", n_cascades=0, affine=True, width=0.25)
    with torch.no_grad():  # moving(i) = fixed(i − 3 voxels along x): u = −3 voxels doubles the misalignment
        worse.affine.head.bias[9] = -3.0
    card = {"name": "worse", "grid": {"shape": [24, 24, 24]}, "normalization": {"type": "window", "min": 0, "max": 1}}
    model = save_checkpoint(tmp_path / "worse.pt", worse, card)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model), "--pairs", str(listing), "--output", str(out), "--device", "cpu"]) == 0
    with open(out / "evaluation.csv", newline="") as fh:
        (row,) = csv.DictReader(fh)
    assert float(row["dice"]) < float(row["unregistered_dice"]) == pytest.approx(unregistered_dice, abs=1e-9)
    assert float(row["landmark_error"]) == pytest.approx(12.0, abs=1e-3)  # 6 mm more than unregistered
    err = capsys.readouterr().err
    assert "warning: pair 0 r=1: dice, correlation, landmark_error worse than without registration" in err


def test_worse_than_unregistered_compares_each_score_in_its_direction():
    from rcreg.training.evaluation import worse_than_unregistered

    scores = {"dice": 0.972, "unregistered_dice": 0.987, "correlation": 0.9, "unregistered_correlation": 0.8,
              "landmark_error": (2.0, 0.1, 3), "unregistered_landmark_error": (1.0, 0.1, 3)}
    assert worse_than_unregistered(scores) == ["dice", "landmark_error"]
    scores.update(dice=float("nan"), landmark_error=(0.5, 0.1, 3))
    assert worse_than_unregistered(scores) == []
