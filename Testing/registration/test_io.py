"""Reading images in every supported form keeps geometry; label maps, points and atomic writes."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from volumes import make_image, rotation, write_dicom_series
from rcreg.io import (InputError, read_image, read_label_map, read_points, read_transform, write_image, write_points,
                      write_transform)

DIRECTION = rotation(0.2, -0.4, 0.7)


@pytest.fixture
def image():
    return make_image([12, 10, 7], [0.9, 1.2, 2.5], DIRECTION, [-3.0, 4.5, 10.0],
                      lambda p: 100 + p[..., 0] + 2 * p[..., 1] - p[..., 2])


def assert_same(a: sitk.Image, b: sitk.Image, atol: float = 1e-5) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b), atol=atol)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".nii"])
def test_read_formats(image, tmp_path, suffix):
    path = tmp_path / f"image{suffix}"
    sitk.WriteImage(image, str(path))
    assert_same(read_image(path), image)


def test_nibabel_image_matches_itk_reading(image, tmp_path):
    """nibabel's RAS affine, converted by rcreg, gives ITK's own LPS geometry for the same file."""
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    converted = read_image(nibabel.load(str(tmp_path / "image.nii.gz")))
    assert_same(converted, sitk.ReadImage(str(tmp_path / "image.nii.gz")))


def test_nibabel_only_format(tmp_path):
    """A FreeSurfer .mgz (written by nibabel) is read with the geometry nibabel reports."""
    data = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    affine = np.array([[0, 0, 2.0, -10], [-1.5, 0, 0, 20], [0, 1.0, 0, 5], [0, 0, 0, 1]])
    nibabel.save(nibabel.MGHImage(data, affine), str(tmp_path / "image.mgz"))
    image = read_image(tmp_path / "image.mgz")
    np.testing.assert_allclose(sitk.GetArrayFromImage(image).transpose(2, 1, 0), data)
    for index in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        ras = affine @ np.array([*index, 1.0])
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(index), ras[:3] * [-1, -1, 1], atol=1e-4)


@pytest.mark.parametrize("members", [1, 3])
def test_integer_nifti_gz_length_check_from_the_trailer(image, tmp_path, members, monkeypatch):
    """Integer NIfTI voxels cannot be NaN, so a .nii.gz is judged complete from its gzip trailer without
    decompressing it; a file written as several gzip members (bgzip, pigz -i) records only the last one's
    size there and is read in full instead — both are read as written, while the same file cut short is
    refused (the reference: the array written)."""
    import gzip

    from rcreg.io import _complete_without_reading

    array = np.random.default_rng(0).integers(-1000, 1000, (20, 24, 28)).astype(np.int16)
    written = sitk.GetImageFromArray(array)
    written.SetSpacing(image.GetSpacing())
    raw = tmp_path / "plain.nii"
    sitk.WriteImage(written, str(raw))
    data = raw.read_bytes()
    path = tmp_path / "image.nii.gz"
    step = -(-len(data) // members)
    path.write_bytes(b"".join(gzip.compress(data[i:i + step]) for i in range(0, len(data), step)))
    assert _complete_without_reading(path, len(data)) == (members == 1)
    with monkeypatch.context() as patch:
        if members == 1:  # judged from the trailer: the data are never decompressed by the check
            patch.setattr(nibabel.openers, "ImageOpener", lambda *a, **k: pytest.fail("data decompressed"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), array)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    assert not _complete_without_reading(cut, len(data))
    with pytest.raises(InputError, match="truncated"):
        read_image(cut)
    tiny = tmp_path / "tiny.nii.gz"  # cut inside its header: ITK alone would read zeros
    tiny.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="truncated"):
        read_image(tiny)


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_nifti_gz_with_corrupt_data_is_refused(tmp_path, dtype):
    """One flipped byte in the compressed voxels of a .nii.gz: ITK refuses it without saying why, and nibabel
    (the fallback reader) read wrong values silently; the gzip stream is read to its end (float data: by the
    NaN scan; integer data: beside ITK's read), where its CRC-32 fails (reference: the intact file reads)."""
    values = np.random.default_rng(2).normal(size=(30, 30, 30)) * 100
    volume = sitk.GetImageFromArray(values.astype(dtype))
    path = tmp_path / "good.nii.gz"
    sitk.WriteImage(volume, str(path), True)
    assert read_image(path).GetSize() == (30, 30, 30)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"bad\.nii\.gz: corrupt compressed data"):
        read_image(bad)


def test_nifti_gz_is_written_as_one_gzip_member_compressed_in_pieces(tmp_path):
    """``.nii.gz`` outputs: pieces compressed apart join into one gzip member (the references: Python's gzip,
    ITK's and nibabel's readers, and the trailer check of our reader)."""
    import gzip

    from rcreg.io import _complete_without_reading, _gzip_parallel

    rng = np.random.default_rng(1)
    data = bytes(rng.integers(0, 4, 300_000, dtype=np.uint8)) + bytes(50_000) + b"tail"
    packed = io.BytesIO()
    _gzip_parallel(io.BytesIO(data), packed, 1, block=40_000)  # 9 pieces, each primed with the one before
    packed = packed.getvalue()
    assert gzip.decompress(packed) == data
    for edge in (b"", data[:80_000]):  # nothing, and exactly two whole pieces
        out = io.BytesIO()
        _gzip_parallel(io.BytesIO(edge), out, 6, block=40_000)
        assert gzip.decompress(out.getvalue()) == edge
    assert len(packed) < 0.5 * len(data)
    volume = make_image([40, 30, 20], [0.9, 1.2, 2.5], DIRECTION, [1.0, 2.0, 3.0], lambda p: 1000 * np.sin(p[..., 0]))
    volume = sitk.Cast(volume, sitk.sitkInt16)
    path = write_image(volume, tmp_path / "out.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]
    assert_same(sitk.ReadImage(str(path)), volume)
    np.testing.assert_array_equal(np.asarray(nibabel.load(str(path)).dataobj).transpose(2, 1, 0),
                                  sitk.GetArrayFromImage(volume))
    assert _complete_without_reading(path, len(gzip.decompress(path.read_bytes())))


def test_dicom_series_folder(image, tmp_path):
    ct = sitk.Cast(image, sitk.sitkInt16)
    write_dicom_series(ct, tmp_path / "dicom")
    read = read_image(tmp_path / "dicom")
    assert_same(read, ct, atol=0.5)
    assert read.GetMetaData("0008|0060") == "CT"


def test_label_map_on_grid_and_integer_floats(image):
    labels = sitk.Cast(image > 105, sitk.sitkFloat32) * 3.0
    read = read_label_map(labels, image)
    assert read.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(labels).astype(np.uint8))
    assert read_label_map(labels * 1000.0, image).GetPixelID() == sitk.sitkUInt16
    shifted = sitk.Image(labels)
    shifted.SetOrigin(np.add(image.GetOrigin(), [0.5, 0, 0]).tolist())
    with pytest.raises(InputError, match="not on its image's grid"):
        read_label_map(shifted, image)
    tiny = sitk.Image(labels)
    tiny.SetOrigin(np.add(image.GetOrigin(), [1e-5, 0, 0]).tolist())  # within tolerance: snapped to the image
    assert read_label_map(tiny, image).GetOrigin() == image.GetOrigin()


def test_points_lps_ras_and_slicer_fcsv(tmp_path):
    points = np.array([[1.5, -2.0, 3.25], [0.0, 10.0, -4.0]])
    write_points(points, tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text(encoding="utf-8").splitlines()[0] == "x,y,z"
    np.testing.assert_array_equal(read_points(tmp_path / "p.csv"), points)
    (tmp_path / "ras.csv").write_text("label,r,a,s\nA,1.5,-2,3.25\nB,0,10,-4\n")
    np.testing.assert_array_equal(read_points(tmp_path / "ras.csv"), points * [-1, -1, 1])
    (tmp_path / "p.fcsv").write_text("# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n"
                                     "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
                                     "vtkMRMLMarkupsFiducialNode_0,1.5,-2,3.25,0,0,0,1,1,1,0,F-1,,\n")
    np.testing.assert_array_equal(read_points(tmp_path / "p.fcsv"), points[:1] * [-1, -1, 1])


def test_write_image_is_atomic(image, tmp_path):
    write_image(image, tmp_path / "ok.nii.gz")
    assert_same(sitk.ReadImage(str(tmp_path / "ok.nii.gz")), image)
    with pytest.raises(OSError, match="bad.unknownformat"):
        write_image(image, tmp_path / "bad.unknownformat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.nii.gz"]


def test_read_transform_from_displacement_image(tmp_path):
    field = sitk.GetImageFromArray(np.tile(np.array([1.0, -2.0, 0.5], np.float32), (4, 5, 6, 1)), isVector=True)
    sitk.WriteImage(field, str(tmp_path / "field.nii.gz"))
    transform = read_transform(tmp_path / "field.nii.gz")
    np.testing.assert_allclose(transform.TransformPoint((1.0, 1.0, 1.0)), (2.0, -1.0, 1.5))
    with pytest.raises(InputError, match="not a 3D displacement field"):
        sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkFloat32), str(tmp_path / "scalar.nii.gz"))
        read_transform(tmp_path / "scalar.nii.gz")


def _smooth_field_transform(size=(30, 26, 22)) -> sitk.Transform:
    """A translation then a smooth displacement field on an oblique anisotropic grid: ITK's composite."""
    rng = np.random.default_rng(3)
    from scipy.ndimage import gaussian_filter
    vectors = np.stack([gaussian_filter(rng.normal(size=size[::-1]), 3) * 40 for _ in range(3)], -1)
    field = sitk.GetImageFromArray(vectors, isVector=True)
    field.SetSpacing((1.5, 2.0, 2.5))
    field.SetOrigin((-20.0, -25.0, -30.0))
    field.SetDirection(rotation(0.2, -0.1, 0.3).ravel().tolist())
    composite = sitk.CompositeTransform(sitk.TranslationTransform(3, (2.0, -1.0, 3.0)))
    composite.AddTransform(sitk.DisplacementFieldTransform(field))
    return composite


def test_h5_transform_is_compact_and_read_by_itk_and_ants(tmp_path, monkeypatch):
    """write_transform stores the field as compressed float32: ITK (SimpleITK) and ANTs read back the same
    mapping (reference: the transform in memory), from a file well under ITK's own float64 one."""
    import ants
    import h5py

    monkeypatch.setattr("rcreg.io._H5_CHUNK", 10_000)
    transform = _smooth_field_transform()
    write_transform(transform, tmp_path / "ours.h5")
    sitk.WriteTransform(transform, str(tmp_path / "itk.h5"))
    assert (tmp_path / "ours.h5").stat().st_size < 0.6 * (tmp_path / "itk.h5").stat().st_size
    with h5py.File(tmp_path / "ours.h5") as h5:
        kinds = {g["TransformType"][0].decode(): g for g in h5["TransformGroup"].values()}
        assert sorted(kinds) == ["CompositeTransform_double_3_3", "DisplacementFieldTransform_double_3_3",
                                 "TranslationTransform_double_3_3"]
        stored = kinds["DisplacementFieldTransform_double_3_3"]["TransformParameters"]
        assert stored.dtype == np.float32 and stored.compression == "gzip" and stored.shuffle
        # h5py's own filters decode our chunks to the field's float32 values (6 chunks, the last partial)
        field = sitk.DisplacementFieldTransform(transform.GetNthTransform(1)).GetDisplacementField()
        assert stored.chunks == (10_000,) and stored.size % 10_000
        np.testing.assert_array_equal(stored[()], sitk.GetArrayFromImage(field).ravel().astype(np.float32))
        assert kinds["TranslationTransform_double_3_3"]["TransformParameters"].dtype == np.float64
    points = np.random.default_rng(4).uniform(-15, 15, size=(40, 3))
    expected = np.array([transform.TransformPoint(p.tolist()) for p in points])
    assert np.abs(expected - points).max() > 2  # a real mapping
    by_itk = read_transform(tmp_path / "ours.h5")
    np.testing.assert_allclose([by_itk.TransformPoint(p.tolist()) for p in points], expected, atol=1e-5)
    by_ants = ants.read_transform(str(tmp_path / "ours.h5"))
    np.testing.assert_allclose([by_ants.apply_to_point(tuple(p)) for p in points], expected, atol=1e-4)


def test_h5_transform_without_h5py_is_itks_own_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` raises ImportError, as when it is missing
    transform = _smooth_field_transform((8, 7, 6))
    write_transform(transform, tmp_path / "ours.h5")
    sitk.WriteTransform(transform, str(tmp_path / "itk.h5"))
    assert (tmp_path / "ours.h5").stat().st_size == (tmp_path / "itk.h5").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["itk.h5", "ours.h5"]


@pytest.fixture
def full_disk(tmp_path, request):
    """A small tmpfs folder: 64 KiB, or the KiB a test gives by indirect parametrization of ``full_disk``
    (needs mount rights, e.g. root in a container; skipped otherwise)."""
    folder = tmp_path / "small"
    folder.mkdir()
    size = f"size={getattr(request, 'param', 64)}k"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("full_disk, suffix, edge", [(64, ".nii.gz", 40), (64, ".nrrd", 40), (64, ".h5", 40),
                                                     (64, ".h5", 13), (68, ".h5", 13), (72, ".h5", 13),
                                                     (80, ".h5", 13)], indirect=["full_disk"])
def test_full_disk_gives_one_line_and_leaves_nothing(full_disk, suffix, edge, capfd):
    """Full while ITK writes, and (13³ .h5: ITK's 53 KB file fits, not the compact copy beside it) while h5py
    copies, writes chunks or closes the compact file (the disk sizes reach each)."""
    noise = sitk.GetImageFromArray(np.random.default_rng(0).random((edge,) * 3).astype(np.float32))
    capfd.readouterr()
    with pytest.raises(OSError, match=r"out\..*: cannot write .*\(no space left on device\)$"):
        if suffix == ".h5":
            write_transform(sitk.DisplacementFieldTransform(sitk.Cast(sitk.Compose([noise] * 3), sitk.sitkVectorFloat64)), full_disk / f"out{suffix}")
        else:
            write_image(noise, full_disk / f"out{suffix}", compression_level=0)
    assert capfd.readouterr().err == ""  # ITK's and HDF5's diagnostics do not leak
    assert list(full_disk.iterdir()) == []


def test_non_utf8_output_path_is_refused_not_aborted(image, tmp_path):
    with pytest.raises(OSError, match=r"caf\\xe9\.nii\.gz: path is not valid UTF-8"):
        write_image(image, tmp_path / os.fsdecode(b"caf\xe9.nii.gz"))
    assert list(tmp_path.iterdir()) == []


def test_array_ijk_follows_itk_indices():
    """array_ijk(image)[i, j, k] is SimpleITK's image[i, j, k] (scalar and vector images); image_from_ijk inverts it."""
    from rcreg.io import array_ijk, image_from_ijk

    values = np.arange(3 * 4 * 5, dtype=np.float32).reshape(5, 4, 3)  # SimpleITK order (K, J, I)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing([1.0, 2.0, 3.0])
    ijk = array_ijk(image)
    assert ijk.shape == (3, 4, 5) and all(ijk[i, j, k] == image[i, j, k] for i, j, k in [(0, 0, 0), (2, 1, 4), (1, 3, 2)])
    vector = sitk.Compose([image, image * 2, image * 3])
    assert array_ijk(vector).shape == (3, 4, 5, 3) and tuple(array_ijk(vector)[2, 1, 4]) == vector[2, 1, 4]
    assert tuple(image_from_ijk(array_ijk(vector), like=vector)[2, 1, 4]) == vector[2, 1, 4]  # vectors round-trip
    back = image_from_ijk(ijk, like=image)
    assert back.GetSpacing() == image.GetSpacing() and np.array_equal(sitk.GetArrayFromImage(back), values)
    copy = array_ijk(image)
    copy[0, 0, 0] = -1
    assert image[0, 0, 0] == 0 and not array_ijk(image, view=True).flags.writeable
