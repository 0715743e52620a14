"""Bad inputs to ``rcreg register`` / ``rcreg apply``: one-line errors naming the file, nothing written.

Running this file as a script prints the table of docs/bad-inputs.md from the actual messages.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).parent))
from volumes import blobs, make_image, rotation, write_dicom_series  # noqa: E402
from rcreg import RecursiveCascadeNetwork, save_checkpoint  # noqa: E402
from rcreg.cli import main  # noqa: E402


_restore: list = []  # undo steps of cases that patch the engine (run after each case)


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


def _set(index: tuple[int, int, int], value: float) -> Callable[[np.ndarray], np.ndarray]:
    """An edit for :func:`_bad_array` that sets one voxel."""
    def edit(a: np.ndarray) -> np.ndarray:
        a[index] = value
        return a
    return edit


def case_nan_voxels(d):
    return _register(d, moving=_bad_array(d, "nan.mha", _set((2, 3, 4), np.nan))), "nan.mha"


def case_inf_voxels(d):
    return _register(d, fixed=_bad_array(d, "inf.nrrd", _set((5, 5, 5), -np.inf))), "inf.nrrd"


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


def _cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def case_truncated_nifti_gz(d):
    return _register(d, moving=_cut_in_half(_volume(d / "cut.nii.gz"))), "cut.nii.gz"


def case_truncated_nifti(d):
    return _register(d, fixed=_cut_in_half(_volume(d / "cut.nii"))), "cut.nii"


def case_truncated_nrrd(d):
    return _register(d, moving=_cut_in_half(_volume(d / "cut.nrrd"))), "cut.nrrd"


def case_truncated_mha(d):
    return _register(d, fixed=_cut_in_half(_volume(d / "cut.mha"))), "cut.mha"


def case_truncated_label_map(d):
    return _register(d, **{"fixed-labels": _cut_in_half(_labels(d, "labels.nii.gz"))}), "labels.nii.gz"


def case_corrupt_nifti_gz(d):
    """An int16 .nii.gz with one byte of its compressed voxels flipped (nibabel, the fallback reader when ITK
    refuses a file, would read wrong values)."""
    path = _bad_array(d, "corrupt.nii.gz", lambda a: (a * 1000).astype(np.int16))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return _register(d, moving=path), "corrupt.nii.gz"


def case_nan_voxels_nifti(d):
    return _register(d, moving=_bad_array(d, "nan.nii.gz", _set((2, 3, 4), np.nan))), "nan.nii.gz"


def case_inf_voxels_nifti(d):
    return _register(d, fixed=_bad_array(d, "inf.nii", _set((1, 2, 3), np.inf))), "inf.nii"


def case_non_utf8_path(d):
    name = os.fsdecode(b"caf\xe9.nii.gz")  # Latin-1 "café": not UTF-8
    os.link(_volume(d / "cafe.nii.gz"), d / name)
    return _register(d, moving=d / name), "caf\\xe9.nii.gz"


def case_fifo_input(d):
    os.mkfifo(d / "pipe.nii.gz")
    return _register(d, moving=d / "pipe.nii.gz"), "pipe.nii.gz"


def case_device_input(d):
    return _register(d, fixed="/dev/zero"), "/dev/zero"


def case_folder_as_points(d):
    (d / "points").mkdir()
    return _register(d, **{"fixed-points": d / "points"}), "points"


def case_image_too_small(d):
    _write(sitk.GetImageFromArray(np.random.default_rng(0).random((2, 2, 2)).astype(np.float32)), d / "tiny.nii.gz")
    return _register(d, fixed=d / "tiny.nii.gz"), "tiny.nii.gz"


def case_mask_too_small(d):
    values = np.zeros((10, 14, 16), np.uint8)
    values[5, 7, 8] = 1
    return _register(d, mask=_labels(d, "dot.nii.gz", values)), "mask"


def _sheared(path: Path, shear: float = 0.05) -> Path:
    image = sitk.ReadImage(str(path))
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    direction[:, 1] = direction[:, 1] + shear * direction[:, 0]
    image.SetDirection(direction.ravel().tolist())
    return _write(image, path)


def case_non_orthonormal_direction(d):
    return _register(d, fixed=_sheared(_volume(d / "sheared.nrrd"))), "sheared.nrrd"


def case_non_orthonormal_label_direction(d):
    return _register(d, **{"moving-labels": _sheared(_labels(d, "sheared.mha"))}), "sheared.mha"


def case_singular_direction(d):
    header = ("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 8 8 8\n"
              "space directions: (1,0,0) (1,0,0) (0,0,1)\nkinds: domain domain domain\nendian: little\n"
              "encoding: raw\nspace origin: (0,0,0)\n\n")
    data = np.random.default_rng(0).random(512).astype("<f4").tobytes()
    (d / "flat.nrrd").write_bytes(header.encode() + data)
    return _register(d, moving=d / "flat.nrrd"), "flat.nrrd"


def case_two_dicom_series(d):
    image = sitk.Cast(sitk.ReadImage(str(_volume(d / "volume.nii.gz"))) * 100, sitk.sitkInt16)
    for series in (1, 2):
        write_dicom_series(image, d / "dicom", series)
    return _register(d, fixed=d / "dicom"), "dicom"


def case_labels_beyond_32_bits(d):
    values = np.zeros((10, 14, 16), np.uint64)
    values[2:5, 2:5, 2:5] = 2 ** 32 + 1
    return _register(d, **{"moving-labels": _labels(d, "huge.nrrd", values)}), "huge.nrrd"


def case_too_many_labels(d):
    values = np.arange(1, 48 * 48 * 48 + 1).reshape(48, 48, 48).astype(np.uint32)  # 110,592 labels
    sitk.WriteImage(sitk.GetImageFromArray(values), str(d / "many.nii.gz"))  # counted before the grid is checked
    return _register(d, **{"fixed-labels": d / "many.nii.gz"}), "many.nii.gz"


def _checkpoint(d: Path, name: str, edit: Callable[[dict], None]) -> Path:
    ckpt = torch.load(_good(d)["model"], weights_only=True)
    edit(ckpt)
    torch.save(ckpt, d / name)
    return d / name


def case_checkpoint_without_model(d):
    return _register(d, model=_checkpoint(d, "nomodel.pt", lambda c: c.pop("model"))), "nomodel.pt"


def case_checkpoint_card_none(d):
    return _register(d, model=_checkpoint(d, "nocard.pt", lambda c: c.update(card=None))), "nocard.pt"


def case_checkpoint_version_string(d):
    return _register(d, model=_checkpoint(d, "version.pt", lambda c: c.update(version="1"))), "version.pt"


def case_checkpoint_state_dict_of_ints(d):
    edit = lambda c: c.update(state_dict={k: 0 for k in c["state_dict"]})  # noqa: E731
    return _register(d, model=_checkpoint(d, "ints.pt", edit)), "ints.pt"


class Payload:
    """Stands for code a malicious checkpoint would run when unpickled."""


def case_checkpoint_with_python_objects(d):
    return _register(d, model=_checkpoint(d, "unsafe.pt", lambda c: c.update(card=Payload()))), "unsafe.pt"


def case_fifo_checkpoint(d):
    os.mkfifo(d / "pipe.pt")
    return _register(d, model=d / "pipe.pt"), "pipe.pt"


def case_absurd_repeat(d):
    return _register(d, repeat=100000), "--repeat"


def case_apply_truncated_transform(d):
    good = _good(d)
    transform = sitk.DisplacementFieldTransform(sitk.Image([6, 6, 6], sitk.sitkVectorFloat64, 3))
    sitk.WriteTransform(transform, str(d / "transform.h5"))
    return ["apply", "--transform", str(_cut_in_half(d / "transform.h5")), "--reference", str(good["fixed"]),
            "--image", str(good["moving"]), "--output", str(d / "out")], "transform.h5"


def case_apply_not_a_transform(d):
    good = _good(d)
    (d / "other.h5").write_text("not HDF5\n")
    return ["apply", "--transform", str(d / "other.h5"), "--reference", str(good["fixed"]),
            "--image", str(good["moving"]), "--output", str(d / "out")], "other.h5"


def case_evaluate_empty_output(d):
    return ["evaluate", "--model", str(_good(d)["model"]), "--pairs", str(d / "pairs.csv"), "--output", ""], "--output"


def case_apply_missing_transform(d):
    good = _good(d)
    return ["apply", "--transform", str(d / "nothing.h5"), "--reference", str(good["fixed"]),
            "--image", str(good["moving"]), "--output", str(d / "out")], "nothing.h5"


def case_apply_scalar_image_as_transform(d):
    good = _good(d)
    return ["apply", "--transform", str(good["fixed"]), "--reference", str(good["fixed"]),
            "--image", str(good["moving"]), "--output", str(d / "out")], "fixed.nii.gz"


def case_not_enough_memory(d):
    """The memory check, with the machine's available memory pretended to be 64 MiB."""
    import rcreg.registration
    original = rcreg.registration._available_memory
    rcreg.registration._available_memory = lambda: 64 * 2 ** 20
    _restore.append(lambda: setattr(rcreg.registration, "_available_memory", original))
    return _register(d), "fixed.nii.gz"


def case_empty_output_dir(d):
    return _register(d, **{"output-dir": ""}), "--output-dir"


def case_pairs_without_columns(d):
    (d / "pairs.csv").write_text("a,b\nmoving.nii.gz,fixed.nii.gz\n", encoding="utf-8")
    good = _good(d)
    return ["register", "--pairs", str(d / "pairs.csv"), "--model", str(good["model"]), "--output-dir",
            str(d / "out")], "pairs.csv"


def case_pairs_with_moving(d):
    (d / "pairs.csv").write_text("moving,fixed\nmoving.nii.gz,fixed.nii.gz\n", encoding="utf-8")
    return _register(d, pairs=d / "pairs.csv"), "--pairs"


def case_refine_negative_weight(d):
    return _register(d, **{"refine-weight": -1}), "weight"


def case_model_none_without_refinement(d):
    return _register(d, model="none", refine=0), "none"


def case_apply_inverse_of_a_dense_field(d):
    good = _good(d)
    field = sitk.Image([6, 6, 6], sitk.sitkVectorFloat32, 3)
    sitk.WriteImage(field, str(d / "field.nii.gz"))
    return ["apply", "--inverse", "--transform", str(d / "field.nii.gz"), "--reference", str(good["fixed"]),
            "--image", str(good["moving"]), "--output", str(d / "out")], "field.nii.gz"


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
    "truncated NIfTI (.nii.gz cut in half)": case_truncated_nifti_gz,
    "truncated NIfTI (.nii cut in half)": case_truncated_nifti,
    "truncated NRRD": case_truncated_nrrd,
    "truncated MHA": case_truncated_mha,
    "truncated label map": case_truncated_label_map,
    "corrupt NIfTI (one byte of an int16 .nii.gz flipped)": case_corrupt_nifti_gz,
    "NaN voxels in a NIfTI file": case_nan_voxels_nifti,
    "infinite voxels in a NIfTI file": case_inf_voxels_nifti,
    "path with a non-UTF-8 byte": case_non_utf8_path,
    "FIFO (named pipe) as image": case_fifo_input,
    "device as image": case_device_input,
    "folder given as points CSV": case_folder_as_points,
    "image too small (2×2×2)": case_image_too_small,
    "one-voxel mask": case_mask_too_small,
    "non-orthonormal (sheared) direction": case_non_orthonormal_direction,
    "label map with a sheared direction": case_non_orthonormal_label_direction,
    "singular direction matrix": case_singular_direction,
    "folder with two DICOM series": case_two_dicom_series,
    "label values beyond 32 bits": case_labels_beyond_32_bits,
    "more distinct labels than supported": case_too_many_labels,
    "checkpoint without 'model'": case_checkpoint_without_model,
    "checkpoint with card None": case_checkpoint_card_none,
    "checkpoint version a string": case_checkpoint_version_string,
    "checkpoint state_dict of ints": case_checkpoint_state_dict_of_ints,
    "checkpoint holding Python objects (pickle)": case_checkpoint_with_python_objects,
    "FIFO as checkpoint": case_fifo_checkpoint,
    "absurd --repeat": case_absurd_repeat,
    "apply: truncated transform.h5": case_apply_truncated_transform,
    "apply: file that is no transform": case_apply_not_a_transform,
    "evaluate: empty --output": case_evaluate_empty_output,
    "fixed image too large for the available memory": case_not_enough_memory,
    "register: empty --output-dir": case_empty_output_dir,
    "pairs file without moving/fixed columns": case_pairs_without_columns,
    "--pairs together with --moving/--fixed": case_pairs_with_moving,
    "negative --refine-weight": case_refine_negative_weight,
    "--model none with --refine 0": case_model_none_without_refinement,
    "apply --inverse of a displacement field without its inverse": case_apply_inverse_of_a_dense_field,
}


_SHARED = {("--model", "tiny-vtn.pt"), ("--output-dir", "out"), ("--fixed", "fixed.nii.gz"), ("--moving", "moving.nii.gz")}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_gives_one_line_error_and_no_output(case, tmp_path, capfd):
    before = set(tmp_path.iterdir())
    argv, name = case(tmp_path)
    capfd.readouterr()
    try:
        code = main(argv)
    finally:
        while _restore:
            _restore.pop()()
    stderr = capfd.readouterr().err  # file-descriptor level: messages printed by ITK/GDCM count too
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("[")]  # progress lines aside
    assert len(lines) == 1 and lines[0].startswith(f"rcreg {argv[0]}: error: "), stderr
    assert name in lines[0]
    assert not (tmp_path / "out").exists()
    inputs = {Path(a) for a in argv if a.startswith(str(tmp_path))}
    leftovers = set(tmp_path.iterdir()) - before - inputs - {tmp_path / n for n in ("fixed.nii.gz", "moving.nii.gz", "tiny-vtn.pt")}
    assert not [p for p in leftovers if p.name.startswith(".") or p.name in ("out", "result")], leftovers


def test_rejected_checkpoint_gives_no_advice_to_disable_weights_only(tmp_path, capfd):
    argv, _ = case_checkpoint_with_python_objects(tmp_path)
    capfd.readouterr()
    assert main(argv) == 1
    stderr = capfd.readouterr().err
    assert "Payload" in stderr and "weights_only" not in stderr, stderr


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
            while _restore:
                _restore.pop()()
            message = [line for line in stderr.getvalue().splitlines() if not line.startswith("[")][0]
            message = message.replace(tmp + "/", "")
            argv = [os.fsencode(a).decode("utf-8", "backslashreplace").replace(tmp + "/", "") for a in argv]
            pairs = zip(argv[1::2], argv[2::2])  # leave out the options every case shares
            command = " ".join([argv[0]] + [f"{k} {v}" for k, v in pairs if (k, v) not in _SHARED])
            rows.append(f"| {number} | {title} | `rcreg {command}` | `{message}` |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
