"""Image lists, pair lists and the preprocessing cache of the training data."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from rcreg.io import InputError
from rcreg.training import datasets
from rcreg.training.datasets import VolumeCache, read_image_list, read_pair_list

CARD = {"grid": {"shape": [24, 24, 24]}, "normalization": {"type": "window", "min": 0.0, "max": 1.0}}


def test_folder_glob_csv_and_json_lists_agree(phantom_list, tmp_path):
    folder = phantom_list.parent
    from_csv = read_image_list(phantom_list)
    assert len(from_csv) == 5 and all(e.labels is not None and e.labels.is_file() for e in from_csv)
    from_glob = read_image_list(str(folder / "phantom0?.nii.gz"))
    assert [e.image for e in from_glob] == [e.image for e in from_csv]
    from_folder = read_image_list(folder)  # label maps are image files too: 10 entries
    assert len(from_folder) == 10
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps({"images": [{"image": str(e.image), "labels": str(e.labels)} for e in from_csv]}))
    assert read_image_list(listing) == from_csv


def test_text_lists_and_nested_folders(phantom_list, tmp_path):
    """A VoxelMorph-style .txt list (one path a line) is a list, not an image; folders are searched recursively."""
    images = [e.image for e in read_image_list(phantom_list)]
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    lines = [str(images[0]), "", "# a comment", f"../nested/a/{images[1].name}", f"../nested/a/b/{images[2].name}"]
    listing.write_text("\n".join(lines) + "\n")
    for relative in ("a", "a/b"):
        (tmp_path / "nested" / relative).mkdir(parents=True)
    for image, relative in ((images[1], "a"), (images[2], "a/b")):
        (tmp_path / "nested" / relative / image.name).write_bytes(image.read_bytes())
    (tmp_path / "nested" / "notes.txt").write_text("not an image")
    assert [e.image for e in read_image_list(listing)] == [images[0], tmp_path / "lists/../nested/a" / images[1].name,
                                                           tmp_path / "lists/../nested/a/b" / images[2].name]
    assert [e.image for e in read_image_list(tmp_path / "nested")] == [tmp_path / "nested/a/b" / images[2].name,
                                                                      tmp_path / "nested/a" / images[1].name]  # sorted
    listing.write_text(f"{images[0]}\nmissing.nii.gz\n")
    with pytest.raises(InputError, match=r"train.txt: image file not found: .*missing.nii.gz"):
        read_image_list(listing)


def test_missing_files_give_one_line_errors(phantom_list, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(f"image,labels\n{phantom_list.parent / 'phantom00.nii.gz'},nowhere.nii.gz\n")
    with pytest.raises(InputError, match="nowhere.nii.gz") as info:
        read_image_list(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="data list not found"):
        read_image_list(tmp_path / "missing")
    with pytest.raises(InputError, match="no image files match"):
        read_image_list(str(tmp_path / "*.nii.gz"))
    with pytest.raises(InputError, match="fixed"):
        read_pair_list(phantom_list)  # an image list is not a pair list


def test_pair_list(pair_list):
    pairs = read_pair_list(pair_list)
    assert [(p.fixed.name, p.moving.name) for p in pairs] == [("phantom00", "phantom01"), ("phantom02", "phantom03")]
    assert pairs[0].moving.labels.name == "phantom01_labels.nii.gz"


def test_cache_preprocesses_once_and_keeps_labels(phantom_list, tmp_path, monkeypatch):
    entry = read_image_list(phantom_list)[0]
    cache = VolumeCache(tmp_path / "cache", CARD)
    volume = cache.load(entry)
    # The phantom is 24³ voxels of 2 mm, so the 24³ network grid is its own grid: values are unchanged
    # (window 0…1 normalisation; label maps by nearest neighbour).
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(entry.image))).transpose(2, 1, 0)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(entry.labels))).transpose(2, 1, 0)
    np.testing.assert_allclose(volume.image[0].numpy(), np.clip(image, 0, 1), atol=1e-5)
    assert np.array_equal(volume.labels[0].numpy(), labels)
    assert volume.grid.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    def miss(*args, **kwargs):
        raise RuntimeError("cache miss")

    monkeypatch.setattr(datasets, "preprocess", miss)
    again = VolumeCache(tmp_path / "cache", CARD).load(entry)
    assert torch.equal(again.image, volume.image) and torch.equal(again.labels, volume.labels)
    other = dict(CARD, grid={"shape": [16, 16, 16]})
    with pytest.raises(RuntimeError, match="cache miss"):  # a different grid is a different cache entry
        VolumeCache(tmp_path / "cache", other).load(entry)


def test_pairwise_pairs_stay_within_each_list(phantom_list, tmp_path):
    """`train: "A;B"` pools both lists, and pairwise mode pairs images only within one of them."""
    from rcreg.training.config import TrainConfig
    from rcreg.training.datasets import TrainingPairs
    from rcreg.training.trainer import resolve_sources

    folder = phantom_list.parent
    config = TrainConfig(train=f"{folder / 'phantom0[0-2].nii.gz'}; {folder / 'phantom0[34].nii.gz'}")
    sources = resolve_sources(config)
    assert [e.name for e in sources.train] == [f"phantom{i:02d}" for i in range(5)]
    assert sources.groups == [0, 0, 0, 1, 1]
    pairs = TrainingPairs.pairwise(sources.groups)
    assert len(pairs) == 3 * 2 + 2 * 1 and (3, 4) in pairs and (0, 3) not in pairs and (4, 2) not in pairs
    with pytest.raises(InputError, match="at least 2 training images in each list.*phantom00"):
        resolve_sources(TrainConfig(train=f"{folder / 'phantom0[0-2].nii.gz'};{folder / 'phantom00.nii.gz'}"))


def test_one_pair_list_serves_training_evaluation_and_cohort_registration(tmp_path):
    """A JSON pair list with landmarks and a mask: training/evaluation read the landmarks and ignore the mask,
    the cohort reader the mask and the name and ignores the landmarks; both resolve the same files."""
    from rcreg.cohort import read_pairs

    for name in ("m.nii.gz", "f.nii.gz", "mask.nii.gz", "f.csv"):
        (tmp_path / name).write_bytes(b"x")
    listing = tmp_path / "pairs.json"
    listing.write_text(json.dumps([{"moving": "m.nii.gz", "fixed": "f.nii.gz", "mask": "mask.nii.gz",
                                    "fixed_landmarks": "f.csv", "name": "case1"}]), encoding="utf-8")
    (entry,), (pair,) = read_pair_list(listing), read_pairs(listing)
    assert (entry.moving.image, entry.fixed.image, entry.fixed.landmarks) == (tmp_path / "m.nii.gz", tmp_path / "f.nii.gz",
                                                                           tmp_path / "f.csv")
    assert (pair.name, pair.moving, pair.fixed, pair.mask) == ("case1", tmp_path / "m.nii.gz", tmp_path / "f.nii.gz",
                                                               tmp_path / "mask.nii.gz")
    (tmp_path / "mask.nii.gz").unlink()
    with pytest.raises(InputError, match="mask file not found"):
        read_pairs(listing)
