"""End-to-end registration in physical space, checked against SimpleITK, antspyx and analytic fields."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from volumes import ball, make_image, rotation, voxel_centres
from rcreg import RecursiveCascadeNetwork, register, save_checkpoint
from rcreg.cli import main
from rcreg.io import read_points, write_points
from rcreg.preprocessing import network_grid

CARD = {"grid": {"shape": [24, 24, 24]}, "normalization": {"type": "percentile", "low": 1, "high": 99}}


def translation_predictor(fixed: sitk.Image, shift_mm: np.ndarray):
    """A predictor returning the constant network flow of a physical translation by ``shift_mm``."""
    grid = network_grid(fixed, CARD["grid"]["shape"])
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    voxels = direction.T @ shift_mm / grid.GetSpacing()[0]

    def predict(f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        assert f.shape == m.shape == (1, 1, *CARD["grid"]["shape"])
        return torch.tensor(voxels, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, *f.shape[2:]).clone()

    predict.card = CARD
    return predict


def centroid(image: sitk.Image) -> np.ndarray:
    """Intensity-weighted centroid (LPS mm)."""
    weights = sitk.GetArrayFromImage(image).astype(float)[..., None]
    return (voxel_centres(image) * weights).sum((0, 1, 2)) / weights.sum()


@pytest.fixture
def saved(oblique_pair, tmp_path):
    """Register the oblique pair with the analytic translation predictor and save the outputs."""
    fixed, moving, shift = oblique_pair
    labels_f = make_image(fixed.GetSize(), fixed.GetSpacing(), np.reshape(fixed.GetDirection(), (3, 3)),
                          fixed.GetOrigin(), lambda p: ball(p, (0, 0, 0), 7.0), np.uint8)
    labels_m = make_image(moving.GetSize(), moving.GetSpacing(), np.reshape(moving.GetDirection(), (3, 3)),
                          moving.GetOrigin(), lambda p: ball(p, shift, 7.0), np.uint8)
    points_f = np.array([[0.0, 0.0, 0.0], [5.0, -3.0, 2.0], [-7.5, 4.0, -1.0]])
    result = register(moving, fixed, model=translation_predictor(fixed, shift), moving_labels=labels_m,
                      fixed_labels=labels_f, fixed_points=points_f, moving_points=points_f + shift, refine=0)
    out = result.save(tmp_path / "out", dense_field=True)
    return fixed, moving, shift, labels_m, labels_f, result, out


def test_saved_files_and_geometry(saved):
    fixed, _, _, _, _, result, out = saved
    names = {p.name for p in out.iterdir()}
    assert names == {"warped.nii.gz", "transform.h5", "inverse_transform.h5", "displacement.nii.gz", "warped_labels.nii.gz",
                     "mapped_points.csv", "metrics.json", "figure.png"}
    for name in ("warped.nii.gz", "displacement.nii.gz", "warped_labels.nii.gz"):
        image = sitk.ReadImage(str(out / name))
        assert image.GetSize() == fixed.GetSize()
        np.testing.assert_allclose(image.GetSpacing(), fixed.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(image.GetOrigin(), fixed.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), fixed.GetDirection(), atol=1e-6)
    assert sitk.ReadImage(str(out / "displacement.nii.gz")).GetNumberOfComponentsPerPixel() == 3
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["model"] == "predict"
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_json_is_strict_json(saved, tmp_path):
    result = saved[5]
    result.metrics["hd95_mm"]["9"] = float("nan")  # e.g. a label missing from one map

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    text = (result.save(tmp_path / "again") / "metrics.json").read_text(encoding="utf-8")
    assert json.loads(text, parse_constant=refuse)["hd95_mm"]["9"] is None


def test_transform_h5_reproduces_warped(saved):
    fixed, moving, _, _, _, _, out = saved
    transform = sitk.ReadTransform(str(out / "transform.h5"))
    again = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    warped = sitk.ReadImage(str(out / "warped.nii.gz"))
    np.testing.assert_allclose(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(warped), atol=1e-4)


def test_displacement_nifti_as_itk_transform_reproduces_warped(saved):
    fixed, moving, _, _, _, _, out = saved
    field = sitk.Cast(sitk.ReadImage(str(out / "displacement.nii.gz")), sitk.sitkVectorFloat64)
    again = sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(field), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    warped = sitk.ReadImage(str(out / "warped.nii.gz"))
    np.testing.assert_allclose(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(warped), atol=1e-3)


def test_antspyx_apply_transforms_agrees(saved, tmp_path):
    import ants  # antspyx: a test requirement (pip install -e .[test]); missing fails, never skips
    fixed, moving, _, _, _, _, out = saved
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nii.gz"))
    sitk.WriteImage(moving, str(tmp_path / "moving.nii.gz"))
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz"))).transpose(2, 1, 0)
    assert np.abs(ours).max() > 50  # the comparison is not between two empty images
    for transform in ("displacement.nii.gz", "transform.h5"):
        warped_ants = ants.apply_transforms(
            fixed=ants.image_read(str(tmp_path / "fixed.nii.gz")), moving=ants.image_read(str(tmp_path / "moving.nii.gz")),
            transformlist=[str(out / transform)], interpolator="linear",
        )
        np.testing.assert_allclose(warped_ants.numpy(), ours, atol=1e-5 * np.abs(ours).max())  # numpy(): (i, j, k)
    # Points go the other way (fixed → moving), as with rcreg apply --points.
    import pandas

    points = pandas.DataFrame({"x": [0.0, 5.0], "y": [0.0, -3.0], "z": [0.0, 2.0]})
    mapped = ants.apply_transforms_to_points(3, points, [str(out / "displacement.nii.gz")])
    np.testing.assert_allclose(mapped[["x", "y", "z"]].to_numpy(), points.to_numpy() + saved[2], atol=1e-4)


@pytest.mark.slow
def test_transformix_with_displacement_field_agrees(saved, tmp_path):
    """elastix's DeformationFieldTransform reads displacement.nii.gz as written (docs/registration.md)."""
    import itk  # itk-elastix: a test requirement; missing fails, never skips
    fixed, moving, _, _, _, _, out = saved
    sitk.WriteImage(moving, str(tmp_path / "moving.nii.gz"))
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap({
        "Transform": ["DeformationFieldTransform"],
        "DeformationFieldFileName": [str(out / "displacement.nii.gz")],
        "DeformationFieldInterpolationOrder": ["1"], "NumberOfParameters": ["0"],
        "FixedImageDimension": ["3"], "MovingImageDimension": ["3"], "UseDirectionCosines": ["true"],
        "Size": [str(n) for n in fixed.GetSize()], "Index": ["0", "0", "0"],
        "Spacing": [repr(float(v)) for v in fixed.GetSpacing()], "Origin": [repr(float(v)) for v in fixed.GetOrigin()],
        "Direction": [repr(float(v)) for v in np.reshape(fixed.GetDirection(), (3, 3)).T.ravel()],  # column-major
        "ResampleInterpolator": ["FinalLinearInterpolator"], "Resampler": ["DefaultResampler"],
        "DefaultPixelValue": ["0"], "ResultImagePixelType": ["float"],
        "FixedInternalImagePixelType": ["float"], "MovingInternalImagePixelType": ["float"],
        "InitialTransformParametersFileName": ["NoInitialTransform"], "HowToCombineTransforms": ["Compose"],
    })
    result = itk.transformix_filter(itk.imread(str(tmp_path / "moving.nii.gz"), itk.F), parameters)
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))
    np.testing.assert_allclose(itk.array_from_image(result), ours, atol=1e-5 * np.abs(ours).max())


def test_known_translation_is_undone(saved):
    fixed, moving, shift, _, _, result, _ = saved
    field = sitk.GetArrayFromImage(result.displacement)
    np.testing.assert_allclose(field.reshape(-1, 3), np.broadcast_to(shift, (field.size // 3, 3)), atol=1e-6)
    half_voxel = 0.5 * min(fixed.GetSpacing())
    before = centroid(result.moving_on_fixed) - centroid(fixed)
    after = centroid(result.warped) - centroid(fixed)
    assert np.linalg.norm(before) > 4 * half_voxel  # the pair really starts misaligned
    assert np.linalg.norm(after) < half_voxel
    # Voxel-wise: the same as resampling through ITK's own translation transform.
    expected = sitk.Resample(moving, fixed, sitk.TranslationTransform(3, shift.tolist()), sitk.sitkLinear, 0.0,
                             sitk.sitkFloat32)
    np.testing.assert_allclose(sitk.GetArrayFromImage(result.warped), sitk.GetArrayFromImage(expected), atol=1e-3)
    assert result.metrics["correlation_after"] > result.metrics["correlation_before"]
    assert result.metrics["folding_fraction"] == 0.0


def test_labels_points_and_metrics(saved):
    fixed, _, shift, _, labels_f, result, out = saved
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped_labels.nii.gz")))
    target = sitk.GetArrayFromImage(labels_f)
    assert set(np.unique(warped)) <= {0, 1, 2}
    for label in (1, 2):
        a, b = warped == label, target == label
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.85
        assert result.metrics["dice"][str(label)] == pytest.approx(dice)
        assert result.metrics["dice"][str(label)] > result.metrics["dice_before"][str(label)]
    assert result.metrics["hd95_mm_mean"] < 2 * max(fixed.GetSpacing())
    mapped = read_points(out / "mapped_points.csv")
    points_f = np.array([[0.0, 0.0, 0.0], [5.0, -3.0, 2.0], [-7.5, 4.0, -1.0]])
    np.testing.assert_allclose(mapped, points_f + shift, atol=1e-6)  # fixed → moving space
    assert result.metrics["landmark_error_mm_mean"] < 1e-5
    assert result.metrics["landmark_error_mm_mean_before"] == pytest.approx(np.linalg.norm(shift))


def test_apply_cli_matches_register_outputs(saved, tmp_path):
    fixed, moving, shift, labels_m, _, _, out = saved
    paths = {name: tmp_path / f"{name}.nrrd" for name in ("fixed", "moving", "labels")}
    for name, image in (("fixed", fixed), ("moving", moving), ("labels", labels_m)):
        sitk.WriteImage(image, str(paths[name]))
    points = np.array([[1.0, 2.0, 3.0], [-4.0, 0.5, 2.0]])
    write_points(points, tmp_path / "points.csv")
    for transform in ("transform.h5", "displacement.nii.gz"):
        argv = ["apply", "--transform", str(out / transform), "--reference", str(paths["fixed"]),
                "--image", str(paths["moving"]), "--output", str(tmp_path / "w.nii.gz"),
                "--labels", str(paths["labels"]), "--output-labels", str(tmp_path / "l.nii.gz"),
                "--points", str(tmp_path / "points.csv"), "--output-points", str(tmp_path / "p.csv")]
        assert main(argv) == 0
        np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "w.nii.gz"))),
                                   sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz"))), atol=1e-3)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "l.nii.gz"))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped_labels.nii.gz"))))
        np.testing.assert_allclose(read_points(tmp_path / "p.csv"), points + shift, atol=1e-5)


@pytest.mark.parametrize("extra", [["--no-amp"], ["--cascades", "1", "--repeat", "2", "--amp", "--symmetric"],
                                   ["--flip-average", "--no-amp"]])
def test_random_network_end_to_end_through_cli(oblique_pair, tmp_path, extra, capsys):
    fixed, moving, _ = oblique_pair
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nii.gz"))
    sitk.WriteImage(sitk.Cast(moving, sitk.sitkInt16), str(tmp_path / "moving.nrrd"))
    network = RecursiveCascadeNetwork("vtn", n_cascades=2, width=0.125)
    save_checkpoint(tmp_path / "random.pt", network, CARD)
    argv = ["register", "--moving", str(tmp_path / "moving.nrrd"), "--fixed", str(tmp_path / "fixed.nii.gz"),
            "--output-dir", str(tmp_path / "out"), "--model", str(tmp_path / "random.pt"), "--device", "cpu", *extra]
    assert main(argv) == 0
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"warped.nii.gz", "transform.h5", "inverse_transform.h5", "metrics.json", "figure.png"}
    # Outputs get the permissions a plain open()/mkdir() would give (temp files start as 0600/0700).
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask
    assert {stat.S_IMODE((tmp_path / "out" / n).stat().st_mode) for n in names} == {0o666 & ~umask}
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["amp"] == ("--amp" in extra) and metrics["symmetric"] == ("--symmetric" in extra)
    assert metrics["flip_average"] == ("--flip-average" in extra)
    assert metrics["model"] == "random" and set(metrics["timings_s"]) >= {"read", "preprocess", "network", "field", "resample"}
    stderr = capsys.readouterr().err
    expected_cascades = 1 + (2 if "--cascades" not in extra else 1 * 2)  # affine + deformable × repeat
    expected_cascades *= 2 if "--symmetric" in extra else 1  # both orders of the pair
    expected_cascades *= 4 if "--flip-average" in extra else 1  # the pair and its three mirror images
    assert f"cascade {expected_cascades}/{expected_cascades}" in stderr
    # The saved transform reproduces the saved image for an arbitrary (random-network) field too; an int16
    # moving image gives an int16 warped image: SimpleITK's float resampling rounded to the nearest integer.
    transform = sitk.ReadTransform(str(tmp_path / "out" / "transform.h5"))
    again = sitk.Resample(sitk.ReadImage(str(tmp_path / "moving.nrrd")), fixed, transform, sitk.sitkLinear, 0.0,
                          sitk.sitkFloat32)
    warped = sitk.ReadImage(str(tmp_path / "out" / "warped.nii.gz"))
    assert warped.GetPixelID() == sitk.sitkInt16
    difference = np.abs(sitk.GetArrayFromImage(again) - sitk.GetArrayFromImage(warped))
    assert difference.max() <= 0.5 + 1e-3 and difference.mean() > 0.1  # rounded, not truncated or left float


def test_help_for_every_command(capsys):
    for command in ("register", "apply", "models"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    assert "--output-dir" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["geometry", "mass"])
def test_initial_alignment_recovers_a_far_translation(method):
    """The same voxels with the origin moved 400 mm away: no overlap, so only the initial
    alignment can bring them together; a zero-flow predictor then gives exactly that translation."""
    fixed = make_image([30, 26, 12], [1.1, 1.3, 2.6], rotation(0.2, 0.1, -0.3), [-16.0, -17.0, -14.0],
                       lambda p: 100 * np.exp(-((p - [3.0, -2.0, 1.0]) ** 2).sum(-1) / 60))
    offset = np.array([400.0, -250.0, 120.0])
    moving = sitk.Image(fixed)
    moving.SetOrigin((np.asarray(fixed.GetOrigin()) + offset).tolist())  # moving(x) = fixed(x − offset)

    def zero(f, m):
        return torch.zeros(1, 3, *f.shape[2:])

    zero.card = CARD
    with pytest.raises(ValueError, match="does not overlap"):
        register(moving, fixed, model=zero)
    result = register(moving, fixed, model=zero, initial_alignment=method, refine=0,
                      fixed_points=[[0.0, 0.0, 0.0]], moving_points=[offset.tolist()])
    np.testing.assert_allclose(result.metrics["initial_translation_mm"], offset, atol=1e-6)
    field = sitk.GetArrayFromImage(result.displacement).reshape(-1, 3)
    np.testing.assert_allclose(field, np.broadcast_to(offset, field.shape), atol=1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(result.warped), sitk.GetArrayFromImage(fixed), atol=1e-3)
    assert result.metrics["correlation_before"] == pytest.approx(1.0)  # "before" includes the alignment
    assert result.metrics["landmark_error_mm_mean"] < 1e-6


@pytest.mark.parametrize("native", [False, True])
def test_amp_default_follows_the_device_and_leaves_the_network_as_it_was(oblique_pair, monkeypatch, native):
    """``amp=None``: bf16 for a cascade network exactly where the device computes bf16 natively (patched here,
    so both answers are checked on any CPU); never for a plain predictor or refinement alone; the network
    passed in keeps its own setting."""
    import rcreg.registration

    fixed, moving, shift = oblique_pair
    monkeypatch.setattr(rcreg.registration, "native_bf16", lambda device: native)
    network = RecursiveCascadeNetwork("vtn", n_cascades=1, width=0.125)
    network.card = CARD
    seen = []
    original = RecursiveCascadeNetwork._run
    monkeypatch.setattr(RecursiveCascadeNetwork, "_run", lambda self, *a: seen.append(self.amp) or original(self, *a))
    assert register(moving, fixed, model=network, refine=0, device="cpu").metrics["amp"] is native
    assert seen == [native, native] and network.amp is False  # affine + 1 cascade ran so; the attribute is back
    assert register(moving, fixed, model=translation_predictor(fixed, shift), refine=0).metrics["amp"] is False
    assert register(moving, fixed, model="none", refine=1).metrics["amp"] is False


def test_native_bf16_answers_for_every_device_kind():
    from rcreg.models import native_bf16

    assert isinstance(native_bf16("cpu"), bool) and native_bf16("meta") is False


def test_correlation_metrics_on_a_large_grid_use_every_second_voxel():
    """Above ``CORRELATION_VOXELS`` the correlations compare every second fixed voxel along each axis; the
    "before" image is resampled there alone. Reference: SimpleITK's resampling of the moving image onto the
    whole fixed grid and numpy's correlation over those voxels (a one-voxel misalignment of the subgrid would
    show: the images are noise)."""
    from rcreg.registration import CORRELATION_VOXELS

    rng = np.random.default_rng(3)
    size = (150, 140, 110)
    assert np.prod(size) > CORRELATION_VOXELS and np.prod(size) <= 8 * CORRELATION_VOXELS
    fixed = make_image(list(size), [1.0, 1.1, 1.3], rotation(0.2, 0.0, 0.1), [3.0, -4.0, 5.0], lambda p: p[..., 0])
    noise = sitk.GetImageFromArray(rng.normal(size=size[::-1]).astype(np.float32))
    noise.CopyInformation(fixed)
    fixed = sitk.SmoothingRecursiveGaussian(noise, 1.2)
    moving = sitk.Resample(fixed, fixed, sitk.TranslationTransform(3, (0.7, -0.4, 0.3)), sitk.sitkLinear, 0.0)

    def zero(f, m):
        return torch.zeros(1, 3, *f.shape[2:])

    zero.card = CARD
    result = register(moving, fixed, model=zero, refine=0)
    every_second = (slice(None, None, 2),) * 3
    fixed_arr = sitk.GetArrayFromImage(fixed)[every_second].ravel()
    before = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkLinear, 0.0))[every_second]
    warped = sitk.GetArrayFromImage(result.warped)[every_second]
    assert result.metrics["correlation_before"] == pytest.approx(np.corrcoef(before.ravel(), fixed_arr)[0, 1], abs=1e-5)
    assert result.metrics["correlation_after"] == pytest.approx(np.corrcoef(warped.ravel(), fixed_arr)[0, 1], abs=1e-5)
    assert result.metrics["correlation_stride"] == 2
    shifted = sitk.GetArrayFromImage(fixed)[1::2, ::2, ::2].ravel()[:fixed_arr.size]
    assert abs(np.corrcoef(shifted, fixed_arr)[0, 1] - result.metrics["correlation_before"]) > 0.05
    np.testing.assert_allclose(sitk.GetArrayFromImage(result.moving_on_fixed),
                               sitk.GetArrayFromImage(sitk.Resample(moving, fixed, sitk.Transform(), sitk.sitkLinear, 0.0)),
                               atol=1e-4)


def test_a_foreground_card_puts_the_network_grid_on_the_pair_and_its_flow_in_that_grids_voxels():
    """A 10-voxel cube in a 60³ field of view and the same cube 3 mm further along x. With ``grid.region:
    foreground`` the 24³ grid spans the union of the cubes plus 8 mm — i 2…30, j and k 2…27, so 29/24 mm
    voxels (the whole field of view would give 2.5 mm) — and a constant flow of 3 mm in those voxels must
    come back as a 3 mm displacement everywhere."""
    def cube(low: int) -> sitk.Image:
        return make_image([60, 60, 60], [1.0] * 3, np.eye(3), [0.0] * 3,
                          lambda p: ((p[..., 0] >= low) & (p[..., 0] < low + 10) & (p[..., 1] >= 10) & (p[..., 1] < 20)
                                     & (p[..., 2] >= 10) & (p[..., 2] < 20)).astype(float))
    fixed, moving = cube(10), cube(13)
    spacing = 29.0 / 24
    seen = []

    def predict(f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        seen.append((f, m))
        return torch.tensor([3.0 / spacing, 0.0, 0.0]).view(1, 3, 1, 1, 1).expand(1, 3, 24, 24, 24).clone()

    predict.card = {**CARD, "grid": {"shape": [24, 24, 24], "region": "foreground"}}
    result = register(moving, fixed, model=predict, refine=0)
    assert result.metrics["network_grid"] == {"shape": [24, 24, 24], "spacing_mm": pytest.approx(spacing),
                                              "region": "foreground"}
    field = sitk.GetArrayFromImage(result.displacement).reshape(-1, 3)
    np.testing.assert_allclose(field, np.broadcast_to([3.0, 0.0, 0.0], field.shape), atol=1e-5)
    f, m = seen[0]
    assert float(f.sum()) == pytest.approx(1000 / spacing ** 3, rel=0.05)  # the whole cube is on the grid, once
    assert float(m.sum()) == pytest.approx(1000 / spacing ** 3, rel=0.05)
