"""What `rcreg register` writes and how other tools use it: compact exact transforms, the inverse,
composed transforms in `rcreg apply`, cohorts, and output folders that always hold one run's files.

References are independent: SimpleITK and antspyx resampling, SimpleITK composite transforms, an
analytic smooth field, and the files on disk.
"""
from __future__ import annotations

import csv
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from rcreg.cli import main
from rcreg.registration import register
from volumes import blobs, make_image, rotation

CARD = {"grid": {"shape": [20, 20, 20]}, "normalization": {"type": "percentile", "low": 1, "high": 99}}


def smooth_predictor(amplitude: float = 1.2):
    """A network stand-in returning a smooth, invertible sinusoidal flow (voxels of its grid)."""

    def predictor(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        shape = fixed.shape[2:]
        axes = torch.meshgrid(*[torch.linspace(0, np.pi, n) for n in shape], indexing="ij")
        flow = torch.stack([torch.sin(axes[(c + 1) % 3]) * torch.sin(axes[(c + 2) % 3]) for c in range(3)])
        return amplitude * flow[None]

    predictor.card = CARD
    return predictor


@pytest.fixture
def pair():
    """An oblique anisotropic fixed image and a moving image on another grid."""
    fixed = make_image([30, 26, 20], [1.2, 1.4, 2.0], rotation(0.2, -0.1, 0.3), [-17.0, -18.0, -19.0], blobs)
    moving = make_image([32, 32, 24], [1.3, 1.3, 1.6], rotation(-0.1, 0.2, -0.2), [-20.0, -20.0, -19.0],
                        lambda p: blobs(p, (1.5, -1.0, 0.5)))
    return fixed, moving


def test_compact_transform_resamples_exactly_as_the_dense_field(pair, tmp_path):
    fixed, moving = pair
    result = register(moving, fixed, model=smooth_predictor(), refine=0, initial_alignment="geometry")
    out = result.save(tmp_path / "out", dense_field=True)
    compact = sitk.ReadTransform(str(out / "transform.h5"))
    dense = sitk.DisplacementFieldTransform(sitk.ReadImage(str(out / "displacement.nii.gz"), sitk.sitkVectorFloat64))
    by_compact, by_dense = (sitk.GetArrayFromImage(sitk.Resample(moving, fixed, t, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
                            for t in (compact, dense))
    assert np.abs(by_compact).max() > 10  # not two empty images
    np.testing.assert_allclose(by_compact, by_dense, atol=1e-3 * np.abs(by_dense).max())
    np.testing.assert_allclose(by_compact, sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz"))), atol=1e-3)
    assert result.field.GetNumberOfPixels() < fixed.GetNumberOfPixels()  # the compact grid is smaller


def test_antspyx_applies_the_compact_transform(pair, tmp_path):
    ants = pytest.importorskip("ants")
    fixed, moving = pair
    result = register(moving, fixed, model=smooth_predictor(), refine=0)
    out = result.save(tmp_path / "out")
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "moving.nii.gz"))
    warped = ants.apply_transforms(ants.image_read(str(tmp_path / "fixed.nii.gz")),
                                   ants.image_read(str(tmp_path / "moving.nii.gz")), [str(out / "transform.h5")])
    ours = sitk.GetArrayFromImage(result.warped).transpose(2, 1, 0)  # ants numpy(): (i, j, k)
    np.testing.assert_allclose(warped.numpy(), ours, atol=1e-3 * np.abs(ours).max())


def test_inverse_round_trip_is_within_a_tenth_of_a_millimetre(pair, tmp_path):
    fixed, moving = pair
    result = register(moving, fixed, model=smooth_predictor(), refine=0, initial_alignment="geometry")
    out = result.save(tmp_path / "out")
    forward = sitk.ReadTransform(str(out / "transform.h5"))
    inverse = sitk.ReadTransform(str(out / "inverse_transform.h5"))
    foreground = np.argwhere(sitk.GetArrayFromImage(fixed) > 20)[:, ::-1]  # (i, j, k) indices
    points = [fixed.TransformIndexToPhysicalPoint([int(v) for v in index]) for index in foreground[::7]]
    errors = [np.linalg.norm(np.subtract(inverse.TransformPoint(forward.TransformPoint(p)), p)) for p in points]
    moved = np.mean([np.linalg.norm(np.subtract(forward.TransformPoint(p), p)) for p in points])
    assert moved > 1.0 and np.median(errors) < 0.1, (moved, np.median(errors))
    assert result.metrics["inverse_round_trip_mm"]["median"] < 0.1


def test_apply_composes_several_transforms_in_ants_order_and_inverts(pair, tmp_path):
    fixed, moving = pair
    result = register(moving, fixed, model=smooth_predictor(), refine=0)
    out = result.save(tmp_path / "out")
    shift = sitk.TranslationTransform(3, (4.0, -3.0, 2.0))
    sitk.WriteTransform(shift, str(tmp_path / "shift.tfm"))
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "moving.nii.gz"))
    points = np.array([[0.0, 0.0, 0.0], [3.0, -2.0, 4.0]])
    np.savetxt(tmp_path / "p.csv", points, delimiter=",", header="x,y,z", comments="")
    assert main(["apply", "-t", str(tmp_path / "shift.tfm"), "-t", str(out / "transform.h5"), "-r",
                 str(tmp_path / "fixed.nii.gz"), "-i", str(tmp_path / "moving.nii.gz"), "-o", str(tmp_path / "w.nii.gz"),
                 "--points", str(tmp_path / "p.csv"), "--output-points", str(tmp_path / "m.csv")]) == 0
    composite = sitk.CompositeTransform(shift)  # ANTs order: the last listed (transform.h5) acts first
    composite.AddTransform(sitk.ReadTransform(str(out / "transform.h5")))
    expected = sitk.Resample(moving, fixed, composite, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "w.nii.gz"))),
                               sitk.GetArrayFromImage(expected), atol=1e-4)
    mapped = np.loadtxt(tmp_path / "m.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(mapped, [composite.TransformPoint(p.tolist()) for p in points], atol=1e-6)
    # --inverse maps the mapped points back (each file inverted, the order reversed).
    assert main(["apply", "--inverse", "-t", str(tmp_path / "shift.tfm"), "-t", str(out / "transform.h5"),
                 "--points", str(tmp_path / "m.csv"), "--output-points", str(tmp_path / "back.csv")]) == 0
    np.testing.assert_allclose(np.loadtxt(tmp_path / "back.csv", delimiter=",", skiprows=1), points, atol=0.1)


def test_apply_interpolation_choice(pair, tmp_path):
    fixed, moving = pair
    out = register(moving, fixed, model=smooth_predictor(), refine=0).save(tmp_path / "out")
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "moving.nii.gz"))
    assert main(["apply", "-t", str(out / "transform.h5"), "-r", str(tmp_path / "fixed.nii.gz"), "-n", "nearest",
                 "-i", str(tmp_path / "moving.nii.gz"), "-o", str(tmp_path / "nn.nii.gz")]) == 0
    nearest = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nn.nii.gz")))
    expected = sitk.Resample(moving, fixed, sitk.ReadTransform(str(out / "transform.h5")), sitk.sitkNearestNeighbor,
                             0.0, sitk.sitkFloat32)
    np.testing.assert_array_equal(nearest, sitk.GetArrayFromImage(expected))
    assert np.isin(nearest, np.append(sitk.GetArrayFromImage(moving), 0.0)).all()  # copies values (0 outside)


def test_a_rerun_into_a_folder_leaves_exactly_one_runs_files(pair, tmp_path):
    fixed, moving = pair
    labels = sitk.Cast(moving > 50, sitk.sitkUInt8)
    first = register(moving, fixed, model=smooth_predictor(), refine=0, moving_labels=labels)
    first.save(tmp_path / "out", dense_field=True)
    assert {"warped_labels.nii.gz", "displacement.nii.gz"} <= {p.name for p in (tmp_path / "out").iterdir()}
    second = register(moving, fixed, model=smooth_predictor(0.5), refine=0)
    second.save(tmp_path / "out", figure=False)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"warped.nii.gz", "transform.h5", "inverse_transform.h5", "metrics.json"}
    assert not list(tmp_path.glob(".out.tmp-*"))


def _write_pairs(tmp_path: Path, fixed, moving, count: int) -> Path:
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nii.gz"))
    for n in range(count):
        sitk.WriteImage(moving, str(tmp_path / f"moving{n}.nii.gz"))
    with open(tmp_path / "pairs.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["moving", "fixed"])
        writer.writerows([[f"moving{n}.nii.gz", "fixed.nii.gz"] for n in range(count)])
    return tmp_path / "pairs.csv"


def test_pairs_run_skips_finished_pairs_and_writes_a_summary(pair, tmp_path, capsys, monkeypatch):
    fixed, moving = pair
    pairs = _write_pairs(tmp_path, fixed, moving, 3)
    model = tmp_path / "model.pt"
    from rcreg import RecursiveCascadeNetwork, save_checkpoint
    save_checkpoint(model, RecursiveCascadeNetwork("vtn", n_cascades=1, width=0.125), CARD)
    argv = ["register", "--pairs", str(pairs), "-o", str(tmp_path / "cohort"), "--model", str(model), "--refine", "2",
            "--no-figure"]
    import rcreg.models
    loads = []
    original = rcreg.models.model_from_checkpoint
    monkeypatch.setattr(rcreg.models, "model_from_checkpoint", lambda *a, **k: loads.append(1) or original(*a, **k))
    assert main(argv) == 0
    assert len(loads) == 1  # the model is read once for the whole cohort
    folders = sorted(p.name for p in (tmp_path / "cohort").iterdir() if p.is_dir())
    assert folders == ["0001_moving0", "0002_moving1", "0003_moving2"]
    # A killed run leaves a pair unfinished: only that pair is registered again.
    (tmp_path / "cohort" / "0002_moving1" / "metrics.json").unlink()
    stamps = {f: (tmp_path / "cohort" / f / "warped.nii.gz").stat().st_mtime_ns for f in folders}
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("skipped") == 2
    again = {f: (tmp_path / "cohort" / f / "warped.nii.gz").stat().st_mtime_ns for f in folders}
    assert again["0001_moving0"] == stamps["0001_moving0"] and again["0003_moving2"] == stamps["0003_moving2"]
    assert again["0002_moving1"] != stamps["0002_moving1"]
    with open(tmp_path / "cohort" / "summary.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == folders and all(float(r["correlation_after"]) > 0 for r in rows)


def _paused_register(tmp_path: Path, patch: str) -> subprocess.Popen:
    """``rcreg register`` (refinement alone, fixed registered to itself) in a subprocess with ``patch``
    applied first: Python that replaces a step by one that prints a word and sleeps."""
    code = ("import sys, time, rcreg.registration as r\n" + patch +
            "from rcreg.cli import main\n"
            f"sys.exit(main(['register', '-m', {str(tmp_path / 'fixed.nii.gz')!r}, '-f', {str(tmp_path / 'fixed.nii.gz')!r},"
            f" '-o', {str(tmp_path / 'out')!r}, '--model', 'none', '--refine', '1', '-q']))\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


_PAUSE_WRITING = ("save = r.RegistrationResult.save\n"
                  "def slow(self, *a, **k):\n"
                  "    write = r.write_image\n"
                  "    def paused(*x, **y):\n"
                  "        print('writing', flush=True); time.sleep(30); return write(*x, **y)\n"
                  "    r.write_image = paused\n"
                  "    return save(self, *a, **k)\n"
                  "r.RegistrationResult.save = slow\n")
_PAUSE_REFINING = ("refine = r.refine_flow\n"
                   "def paused(*a, **k):\n"
                   "    print('refining', flush=True); time.sleep(30); return refine(*a, **k)\n"
                   "r.refine_flow = paused\n")


def test_sigterm_during_register_leaves_no_staging_folder(tmp_path):
    """SIGTERM while the outputs are being written: the process exits 143 and removes its staging folder;
    a staging folder of a SIGKILLed run is removed by the next run into the same place."""
    fixed = make_image([60, 60, 60], [1.0, 1.0, 1.0], np.eye(3), [-30.0, -30.0, -30.0], blobs)
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nii.gz"))
    stale = tmp_path / ".out.tmp-killed"
    stale.mkdir()
    (stale / ".rcreg-pid").write_text("999999999", encoding="utf-8")  # no such process
    process = _paused_register(tmp_path, _PAUSE_WRITING)
    assert process.stdout.readline().strip() == "writing"
    assert not stale.exists()  # the killed run's staging folder went first
    assert len(list(tmp_path.glob(".out.tmp-*"))) == 1  # this run's staging folder, being written
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert not list(tmp_path.glob(".out.tmp-*")) and not (tmp_path / "out").exists()


def test_sigterm_during_the_refinement_keeps_the_previous_runs_folder(tmp_path):
    """A second run into a finished folder, stopped by SIGTERM while it computes: exit 143, nothing
    staged, and the folder still holds the first run's files unchanged."""
    fixed = make_image([40, 40, 40], [1.0, 1.0, 1.0], np.eye(3), [-20.0, -20.0, -20.0], blobs)
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nii.gz"))
    register(fixed, fixed, model="none", refine=1).save(tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    process = _paused_register(tmp_path, _PAUSE_REFINING)
    assert process.stdout.readline().strip() == "refining"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert not list(tmp_path.glob(".out.tmp-*"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
