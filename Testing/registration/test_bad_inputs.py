"""Bad inputs to ``rcreg register`` / ``rcreg apply``: one-line errors naming the file, nothing written.

Running this file as a script prints the table of docs/bad-inputs.md from the actual messages.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).parent))
from volumes import blobs, make_image, rotation  # noqa: E402
from rcreg import RecursiveCascadeNetwork, save_checkpoint  # noqa: E402
from rcreg.cli import main  # noqa: E402


def _write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _volume(path: Path, array: np.ndarray | None = None, spacing=(1.2, 1.0, 2.0)) -> Path:
    """A small oblique test volume (``array`` in SimpleITK k, j, i order replaces its voxels)."""
    image = make_image([16, 14, 10], spacing, rotation(0.2, 0.1, -0.3), [-9, -7, -10], blobs)
    if array is not None:
        replaced = sitk.GetImageFromArray(array)
        replaced.CopyInformation(image)
        image = replaced
    return _write(image, path)


def _good(d: Path) -> dict:
    """Valid inputs shared by the cases."""
    net = RecursiveCascadeNetwork("vtn", n_cascades=2, width=0.125)
    save_checkpoint(d / "tiny-vtn.pt", net, {"grid": {"shape": [16, 16, 16]}})
    return {"fixed": _volume(d / "fixed.nii.gz"), "moving": _volume(d / "moving.nii.gz"), "model": d / "tiny-vtn.pt"}


def _register(d: Path, **changes) -> list[str]:
    good = _good(d)
    args = {"moving": good["moving"], "fixed": good["fixed"], "model": good["model"], "output-dir": d / "out", **changes}
    return ["register"] + [item for key, value in args.items() for item in (f"--{key}", str(value))]


def _bad_array(d: Path, name: str, edit: Callable[[np.ndarray], np.ndarray]) -> Path:
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(_volume(d / "tmp.nii.gz"))))
    (d / "tmp.nii.gz").unlink()
    return _volume(d / name, edit(array))


def _labels(d: Path, name: str, values: np.ndarray | None = None, spacing=(1.2, 1.0, 2.0)) -> Path:
    array = np.zeros((10, 14, 16), np.float32) if values is None else values
    if values is None:
        array[3:7, 4:9, 5:11] = 1
    return _volume(d / name, array, spacing)


def case_missing_file(d):
    return _register(d, moving=d / "missing.nii.gz"), "missing.nii.gz"


def case_unreadable_file(d):
    (d / "garbage.nii.gz").write_bytes(b"\x1f\x8b this is not an image")
    return _register(d, moving=d / "garbage.nii.gz"), "garbage.nii.gz"


def case_2d_image(d):
    _write(sitk.GetImageFromArray(np.random.default_rng(0).random((20, 20)).astype(np.float32)), d / "slice.nii.gz")
    return _register(d, fixed=d / "slice.nii.gz"), "slice.nii.gz"


def case_single_slice_3d(d):
    _write(sitk.GetImageFromArray(np.random.default_rng(0).random((1, 20, 20)).astype(np.float32)), d / "one.nrrd")
    return _register(d, fixed=d / "one.nrrd"), "one.nrrd"


def case_4d_image(d):
    frames = [sitk.GetImageFromArray(np.random.default_rng(t).random((8, 8, 8)).astype(np.float32)) for t in range(3)]
    _write(sitk.JoinSeries(frames), d / "series.nii.gz")
    return _register(d, moving=d / "series.nii.gz"), "series.nii.gz"


def case_rgb_image(d):
    rgb = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 255, (8, 8, 8, 3)).astype(np.uint8), isVector=True)
    _write(rgb, d / "rgb.nrrd")
    return _register(d, moving=d / "rgb.nrrd"), "rgb.nrrd"


def case_nan_voxels(d):
    def edit(a):
        a[2, 3, 4] = np.nan
        return a
    return _register(d, moving=_bad_array(d, "nan.mha", edit)), "nan.mha"


def case_inf_voxels(d):
    def edit(a):
        a[5, 5, 5] = -np.inf
        return a
    return _register(d, fixed=_bad_array(d, "inf.nrrd", edit)), "inf.nrrd"


def case_constant_image(d):
    return _register(d, fixed=_bad_array(d, "constant.nii.gz", lambda a: np.full_like(a, 7.0))), "constant.nii.gz"


def case_empty_dicom_folder(d):
    (d / "dicom").mkdir()
    (d / "dicom" / "readme.txt").write_text("no DICOM files here")
    return _register(d, moving=d / "dicom"), "dicom"


def case_no_overlap(d):
    far = make_image([16, 14, 10], (1.2, 1.0, 2.0), np.eye(3), [500.0, 0.0, 0.0], lambda p: blobs(p, (510, 7, 10)))
    return _register(d, moving=_write(far, d / "elsewhere.nii.gz")), "elsewhere.nii.gz"


def case_labels_off_grid(d):
    return _register(d, **{"fixed-labels": _labels(d, "labels.nii.gz", spacing=(1.0, 1.0, 1.0))}), "labels.nii.gz"


def case_non_integer_labels(d):
    values = np.zeros((10, 14, 16), np.float32)
    values[2:5, 2:5, 2:5] = 1.5
    return _register(d, **{"moving-labels": _labels(d, "soft.nii.gz", values)}), "soft.nii.gz"


def case_negative_labels(d):
    values = np.zeros((10, 14, 16), np.float32)
    values[2:5, 2:5, 2:5] = -1
    return _register(d, **{"moving-labels": _labels(d, "negative.nrrd", values)}), "negative.nrrd"


def case_output_parent_is_a_file(d):
    (d / "occupied").write_text("a file, not a folder")
    return _register(d, **{"output-dir": d / "occupied" / "out"}), "occupied"


def case_output_dir_is_a_file(d):
    (d / "result").write_text("a file, not a folder")
    return _register(d, **{"output-dir": d / "result"}), "result"


def case_unknown_model_name(d):
    return _register(d, model="brain-mri-9000"), "brain-mri-9000"


def case_corrupt_checkpoint(d):
    (d / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated zip")
    return _register(d, model=d / "corrupt.pt"), "corrupt.pt"


def case_wrong_architecture_checkpoint(d):
    ckpt = torch.load(_good(d)["model"], weights_only=True)
    ckpt["model"]["n_cascades"] = 3  # the weights hold two cascades
    torch.save(ckpt, d / "wrong.pt")
    return _register(d, model=d / "wrong.pt"), "wrong.pt"


def case_not_an_rcreg_checkpoint(d):
    torch.save({"weights": torch.zeros(3)}, d / "other.pt")
    return _register(d, model=d / "other.pt"), "other.pt"


def case_too_many_cascades(d):
    return _register(d, cascades=5), "tiny-vtn"


def case_points_without_columns(d):
    (d / "points.csv").write_text("a,b,c\n1,2,3\n")
    return _register(d, **{"fixed-points": d / "points.csv"}), "points.csv"


def case_non_numeric_points(d):
    (d / "points.csv").write_text("x,y,z\n1,two,3\n")
    return _register(d, **{"moving-points": d / "points.csv"}), "points.csv"


def case_apply_missing_transform(d):
    good = _good(d)
    return ["apply", "--transform", str(d / "nothing.h5"), "--reference", str(good["fixed"]),
            "--image", str(good["moving"]), "--output", str(d / "out")], "nothing.h5"


def case_apply_scalar_image_as_transform(d):
    good = _good(d)
    return ["apply", "--transform", str(good["fixed"]), "--reference", str(good["fixed"]),
            "--image", str(good["moving"]), "--output", str(d / "out")], "fixed.nii.gz"


CASES = {
    "missing file": case_missing_file,
    "unreadable file (not an image)": case_unreadable_file,
    "2D image": case_2d_image,
    "3D file with a single slice": case_single_slice_3d,
    "4D image (time series)": case_4d_image,
    "RGB (vector) image": case_rgb_image,
    "NaN voxels": case_nan_voxels,
    "infinite voxels": case_inf_voxels,
    "constant image": case_constant_image,
    "empty DICOM folder": case_empty_dicom_folder,
    "moving image far from the fixed one (no overlap)": case_no_overlap,
    "label map not on its image's grid": case_labels_off_grid,
    "non-integer labels": case_non_integer_labels,
    "negative labels": case_negative_labels,
    "output folder cannot be created (a parent is a file)": case_output_parent_is_a_file,
    "output folder is an existing file": case_output_dir_is_a_file,
    "unknown model name": case_unknown_model_name,
    "corrupt checkpoint": case_corrupt_checkpoint,
    "wrong-architecture checkpoint": case_wrong_architecture_checkpoint,
    "not an rcreg checkpoint": case_not_an_rcreg_checkpoint,
    "--cascades beyond the model's cascades": case_too_many_cascades,
    "points CSV without x,y,z columns": case_points_without_columns,
    "non-numeric point coordinates": case_non_numeric_points,
    "apply: missing transform file": case_apply_missing_transform,
    "apply: scalar image given as transform": case_apply_scalar_image_as_transform,
}


_SHARED = {("--model", "tiny-vtn.pt"), ("--output-dir", "out"), ("--fixed", "fixed.nii.gz"), ("--moving", "moving.nii.gz")}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_gives_one_line_error_and_no_output(case, tmp_path, capfd):
    before = set(tmp_path.iterdir())
    argv, name = case(tmp_path)
    capfd.readouterr()
    code = main(argv)
    stderr = capfd.readouterr().err  # file-descriptor level: messages printed by ITK/GDCM count too
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("[")]  # progress lines aside
    assert len(lines) == 1 and lines[0].startswith(f"rcreg {argv[0]}: error: "), stderr
    assert name in lines[0]
    assert not (tmp_path / "out").exists()
    inputs = {Path(a) for a in argv if a.startswith(str(tmp_path))}
    leftovers = set(tmp_path.iterdir()) - before - inputs - {tmp_path / n for n in ("fixed.nii.gz", "moving.nii.gz", "tiny-vtn.pt")}
    assert not [p for p in leftovers if p.name.startswith(".") or p.name in ("out", "result")], leftovers


def markdown_table() -> str:
    """The table of docs/bad-inputs.md, from running every case in a temporary folder."""
    import contextlib
    import io
    import tempfile

    rows = ["| # | bad input | command (abridged) | error (stderr, exit code 1) |", "|---|---|---|---|"]
    for number, (title, case) in enumerate(CASES.items(), 1):
        with tempfile.TemporaryDirectory() as tmp:
            argv, _ = case(Path(tmp))
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr):
                main(argv)
            message = [line for line in stderr.getvalue().splitlines() if not line.startswith("[")][0]
            message = message.replace(tmp + "/", "")
            argv = [a.replace(tmp + "/", "") for a in argv]
            pairs = zip(argv[1::2], argv[2::2])  # leave out the options every case shares
            command = " ".join([argv[0]] + [f"{k} {v}" for k, v in pairs if (k, v) not in _SHARED])
            rows.append(f"| {number} | {title} | `rcreg {command}` | `{message}` |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
