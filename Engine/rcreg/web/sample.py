"""The sample pair of ``rcreg demo`` (Colin27 → MNI152 2009a, fetched by ``rcreg.data``) with a tissue
segmentation of each image, so that a run reports Dice per segment.

The tissue classes are intensity classes inside the brain (Otsu's three thresholds: CSF, grey matter, white
matter), computed the same way on both T1 images, as the accuracy benchmark labels its brain pairs by
intensity classes (docs/benchmarks.md). They are written as label maps beside the session's uploads.
"""
from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

__all__ = ["TISSUES", "tissue_labels", "sample_pair"]

#: Label value → segment name of the tissue segmentations.
TISSUES = {1: "CSF", 2: "Grey matter", 3: "White matter"}


def tissue_labels(image: sitk.Image) -> sitk.Image:
    """Labels 0 (background) and 1–3 (:data:`TISSUES`) of a skull-stripped T1 image by intensity."""
    return sitk.Cast(sitk.OtsuMultipleThresholds(image, numberOfThresholds=len(TISSUES)), sitk.sitkUInt8)


def sample_pair(folder: Path) -> dict[str, tuple[str, Path]]:
    """Fetch the demo pair (cached after the first download) and write its tissue label maps into ``folder``.

    Returns ``(title, path)`` by role: ``fixed``, ``moving``, ``fixed_labels``, ``moving_labels``.
    """
    from .. import data
    from ..commands.demo import FIXED, MOVING
    from ..io import read_image, write_image

    volumes = data.fetch([FIXED, MOVING])
    folder.mkdir(parents=True, exist_ok=True)
    pair = {}
    for role, name in (("fixed", FIXED), ("moving", MOVING)):
        labels = folder / f"{name}_tissues.nii.gz"
        if not labels.is_file():
            write_image(tissue_labels(read_image(volumes[name])), labels)
        pair[role] = (f"sample: {name}", volumes[name])
        pair[f"{role}_labels"] = (f"sample: {name} tissues", labels)
    return pair
