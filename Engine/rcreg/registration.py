"""Registering two volumes in physical space: ``rcreg.register(moving, fixed, …)``.

Pipeline (docs/conventions.md): read → network grid from the fixed image → both images normalised
and resampled onto it → the model's composed flow → a dense LPS-mm displacement field on the fixed
image's full grid → the *original* moving image (and labels, points) resampled once through it.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import numpy as np
import SimpleITK as sitk
import torch

from . import metrics
from .fields import (compact_displacement, dense_displacement, field_jacobian_determinant, flow_on_grid,
                     inverse_transform, registration_transform, round_trip_error)
from .io import (MODALITY_TAG, ImageLike, InputError, array_ijk, as_image, process_alive, public_mode, read_label_map,
                 read_points, write_image, write_points, write_transform)
from .models import DEFAULT_CARD, ModelSpec, default_model, native_bf16, resolve_model, select_device
from .preprocessing import (card_grid, grid_region, initial_translation, normalized_image, on_grid,
                            preprocess_labels, pyramid, refinement_grids, resized_grid)
from .options import NO_MODEL, OUTPUT_FILES, InitialAlignment, RefineOptions, Region
from .refinement import refine as refine_flow
from .resampling import resample
from .runtime import tune_allocator

__all__ = ["register", "RegistrationResult", "resample", "refine_options", "OUTPUT_FILES", "NO_MODEL"]

Progress = Callable[[float, str], None]
RefineSpec = Union[None, int, Mapping, RefineOptions]

#: The finest refinement level is the fixed image's spacing, but never finer than this (mm).
FINEST_REFINEMENT_MM = 1.5

_STAGING = ".{name}.tmp-"  # prefix of a run's staging folder beside its output folder
_OWNER = ".rcreg-pid"  # file in a staging folder naming the process that writes it


def _remove_stale_staging(parent: Path, name: str) -> None:
    """Remove staging folders of earlier runs into ``parent/name`` whose process is gone (killed runs)."""
    for folder in parent.glob(_STAGING.format(name=name) + "*"):
        try:
            pid = int((folder / _OWNER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pid = None
        if pid is not None and pid != os.getpid() and process_alive(pid):
            continue  # another live run is writing it
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class RegistrationResult:
    """Outputs of :func:`register`, all in the fixed image's space.

    warped: the moving image resampled once onto the fixed grid; field: the compact pull-back
    displacement field (LPS mm, ``sitkVectorFloat64``) on the grid it was computed on — the network
    grid, or the finest refinement control grid — padded by one voxel
    (:func:`rcreg.fields.compact_displacement`); translation: the initial alignment (mm), applied
    after the field; transform: ``p ↦ p + u(p) + t`` (:func:`rcreg.fields.registration_transform`);
    :attr:`inverse`: its inverse (:func:`rcreg.fields.inverse_transform`, computed when first asked
    for; :meth:`save` writes it and its round-trip error into metrics.json); warped_labels: moving labels
    (nearest neighbour) or ``None``; mapped_points: fixed points mapped into moving space ``(N, 3)``
    LPS mm, or ``None``; metrics: JSON-ready dictionary; fixed: the fixed image; moving: the moving image
    as given. :attr:`moving_on_fixed` (the moving image on the fixed grid after the initial alignment
    only) and :attr:`displacement` (the transform as a dense field on the fixed grid) are computed when
    first asked for.
    """

    warped: sitk.Image
    field: sitk.Image
    translation: np.ndarray
    transform: sitk.Transform
    fixed: sitk.Image
    moving: sitk.Image
    warped_labels: Optional[sitk.Image] = None
    mapped_points: Optional[np.ndarray] = None
    metrics: dict = field(default_factory=dict)

    @property
    def initial_transform(self) -> sitk.Transform:
        """The initial alignment alone (``p ↦ p + t``): how the moving image was placed before registration."""
        return sitk.TranslationTransform(3, [float(t) for t in self.translation])

    @functools.cached_property
    def moving_on_fixed(self) -> sitk.Image:
        """The moving image on the fixed grid after the initial alignment only (float32), as it was before
        registration."""
        return resample(self.moving, self.fixed, self.initial_transform, keep_type=False)

    @functools.cached_property
    def displacement(self) -> sitk.Image:
        """The pull-back displacement (LPS mm, ``sitkVectorFloat64``) at every fixed voxel."""
        return dense_displacement(self.field, self.fixed, self.translation)

    @functools.cached_property
    def inverse(self) -> sitk.Transform:
        """The inverse transform (moving → fixed points), computed when first asked for (0.1–0.3 s)."""
        return inverse_transform(self.field, self.translation)

    def inverse_round_trip(self) -> dict:
        """``|φ⁻¹(φ(p)) − p|`` (mm) over the transform grid's points: median, 95th percentile, maximum."""
        inside = sitk.Image([n - 2 for n in self.field.GetSize()], sitk.sitkUInt8)  # the grid without its padding
        inside.SetSpacing(self.field.GetSpacing())
        inside.SetDirection(self.field.GetDirection())
        inside.SetOrigin(self.field.TransformIndexToPhysicalPoint([1, 1, 1]))
        error = round_trip_error(self.transform, self.inverse, inside)
        return {"median": float(np.median(error)), "p95": float(np.percentile(error, 95)), "max": float(error.max())}

    def save(self, directory: str | os.PathLike, *, dense_field: bool = False, figure: bool = True) -> Path:
        """Write the outputs (:data:`OUTPUT_FILES`) into ``directory`` as one transaction.

        Everything is written into a staging folder beside ``directory`` first; a new ``directory`` is
        then created by one rename, an existing one receives each file by rename and loses the files
        of an earlier run that this one does not write, so the folder always holds one run's outputs.
        On failure (or an interrupt) the staging folder is removed; staging folders left by killed
        runs are removed by the next run into the same place.

        Args:
            directory: the output folder (created with its parents when missing).
            dense_field: also write ``displacement.nii.gz``, the field on the fixed grid.
            figure: write ``figure.png`` (fixed | moving | warped slices).

        Returns:
            ``directory`` as a :class:`~pathlib.Path`.

        Raises:
            OSError: the folder cannot be created or written (one line: no space, no permission, a
                parent that is a file); nothing of this run is left behind.
        """
        from .figures import registration_figure

        if not str(directory).strip():  # Path("") would be the current folder
            raise OSError("output folder is empty: give a folder for the results")
        directory = Path(directory)
        parent = directory.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_staging(parent, directory.name)
            staging = Path(tempfile.mkdtemp(prefix=_STAGING.format(name=directory.name), dir=parent))
            staging.chmod(public_mode(directory=True))  # mkdtemp creates 0700
            (staging / _OWNER).write_text(str(os.getpid()), encoding="utf-8")
        except (FileExistsError, NotADirectoryError):
            raise OSError(f"{directory}: cannot create output folder (a parent path is a file)") from None
        except OSError as exc:
            raise OSError(f"{directory}: cannot write output folder ({exc.strerror or exc})") from None
        try:
            if directory.exists() and (not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK)):
                raise OSError(f"{directory}: exists and is not a writable folder")
            written = {"warped", "transform", "inverse_transform", "metrics"}
            self.metrics.setdefault("inverse_round_trip_mm", self.inverse_round_trip())
            write_image(self.warped, staging / OUTPUT_FILES["warped"])
            write_transform(self.transform, staging / OUTPUT_FILES["transform"])
            write_transform(self.inverse, staging / OUTPUT_FILES["inverse_transform"])
            if dense_field:  # float32 LPS vectors, as ANTs writes its warps (ITK's NIfTI vector layout)
                write_image(sitk.Cast(self.displacement, sitk.sitkVectorFloat32), staging / OUTPUT_FILES["displacement"])
                written.add("displacement")
            if self.warped_labels is not None:
                write_image(self.warped_labels, staging / OUTPUT_FILES["warped_labels"])
                written.add("warped_labels")
            if self.mapped_points is not None:
                write_points(self.mapped_points, staging / OUTPUT_FILES["mapped_points"])
                written.add("mapped_points")
            (staging / OUTPUT_FILES["metrics"]).write_text(json.dumps(_json_ready(self.metrics), indent=2) + "\n",
                                                           encoding="utf-8")
            if figure:
                registration_figure(self.fixed, self.moving, self.warped, self.transform, staging / OUTPUT_FILES["figure"],
                                    before=self.initial_transform)
                written.add("figure")
            (staging / _OWNER).unlink()
            if directory.exists():
                for key in written:
                    os.replace(staging / OUTPUT_FILES[key], directory / OUTPUT_FILES[key])
                for key in set(OUTPUT_FILES) - written:  # an earlier run's outputs that this one replaces
                    (directory / OUTPUT_FILES[key]).unlink(missing_ok=True)
                staging.rmdir()
            else:
                os.rename(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory


def _json_ready(value):
    """``value`` with NaN/infinite floats replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _as_points(points, name: str) -> np.ndarray:
    """Points from a CSV path or an ``(N, 3)`` array (LPS mm)."""
    if isinstance(points, (str, os.PathLike)):
        return read_points(points)
    array = np.asarray(points, dtype=float)
    if array.ndim != 2 or array.shape[1] != 3:
        raise InputError(f"{name}: points must be an (N, 3) array, got shape {array.shape}")
    return array


def _check_overlap(moving: sitk.Image, grid: sitk.Image, name: str) -> None:
    """Refuse a moving image whose field of view misses the network grid (e.g. a wrong origin)."""
    size = np.asarray(moving.GetSize())
    corners = np.array([[size[a] - 0.5 if (c >> a) & 1 else -0.5 for a in range(3)] for c in range(8)])
    index = np.array([grid.TransformPhysicalPointToContinuousIndex(
        moving.TransformContinuousIndexToPhysicalPoint(c.tolist())) for c in corners])
    if np.any(index.max(axis=0) < -0.5) or np.any(index.min(axis=0) > np.asarray(grid.GetSize()) - 0.5):
        raise InputError(f"{name}: does not overlap the fixed image in physical space "
                         f"(check origins and directions, or use initial alignment 'geometry' or 'mass')")


#: Bytes a registration holds per fixed voxel (float32 copies: the normalised fixed image, the warped
#: and the unregistered moving image on the fixed grid, resampling temporaries) and per moving voxel
#: (its normalised copy and the translated view): an estimate, matching a 600³ fixed image that was
#: seen to fail at 6.6 GB (31 bytes per voxel).
_BYTES_PER_FIXED_VOXEL, _BYTES_PER_MOVING_VOXEL, _BYTES_BASE = 32, 16, 2 ** 29


def _available_memory() -> Optional[int]:
    """Bytes the kernel says can be allocated without swapping (Linux ``MemAvailable``), else ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _check_memory(fixed: sitk.Image, moving: sitk.Image, name: str) -> None:
    """Refuse, before any work, a pair whose registration would not fit in the available memory."""
    available = _available_memory()
    needed = (fixed.GetNumberOfPixels() * _BYTES_PER_FIXED_VOXEL + moving.GetNumberOfPixels() * _BYTES_PER_MOVING_VOXEL
              + _BYTES_BASE)
    if available is not None and needed > available:
        size = "×".join(map(str, fixed.GetSize()))
        raise InputError(f"{name}: a {size} fixed image needs about {needed / 2 ** 30:.1f} GiB to register, "
                         f"{available / 2 ** 30:.1f} GiB is available (resample it coarser or use a --mask)")


def _label_metrics(warped: sitk.Image, before: sitk.Image, fixed: sitk.Image) -> dict:
    """Dice per label (after and before registration), mean Dice and HD95 (mm) on the fixed grid."""
    target, after, initial = (array_ijk(im, view=True) for im in (fixed, warped, before))
    dice = metrics.dice(after, target)
    dice_before = metrics.dice(initial, target, labels=list(dice))
    hd95 = metrics.hausdorff(after, target, spacing=fixed.GetSpacing(), percentile=95, labels=list(dice))
    return {
        "dice": {str(k): v for k, v in dice.items()},
        "dice_mean": metrics.mean_score(dice),
        "dice_before": {str(k): v for k, v in dice_before.items()},
        "dice_mean_before": metrics.mean_score(dice_before),
        "hd95_mm": {str(k): v for k, v in hd95.items()},
        "hd95_mm_mean": metrics.mean_score(hd95),
    }


def image_modality(image: sitk.Image) -> str:
    """The DICOM modality tag if the image has one; else ``"CT"`` when its 1st-percentile intensity is
    below −500 (air in Hounsfield units; MR intensities are not that negative); else ``"MR"`` (NIfTI and
    NRRD carry no modality, and any image that is not CT-like is registered with the MR model)."""
    if image.HasMetaDataKey(MODALITY_TAG) and image.GetMetaData(MODALITY_TAG).strip():
        return image.GetMetaData(MODALITY_TAG).strip()
    values = sitk.GetArrayViewFromImage(image)
    return "CT" if np.percentile(values[::4, ::4, ::4], 1) < -500 else "MR"


#: A CT whose body is narrower than this from left to right (mm) is a head (adult heads are 14–20 cm wide,
#: chests and abdomens 28–50 cm).
HEAD_WIDTH_MM = 250.0


def image_region(image: sitk.Image, modality: str) -> Optional[Region]:
    """The body region of ``image`` where it can be told: for CT, ``"head"`` when the body (HU > −500,
    largest connected part) spans less than :data:`HEAD_WIDTH_MM` from left to right, else ``"body"``;
    ``None`` for other modalities (MR is registered by the MR model whatever it shows)."""
    if modality.upper() != "CT":
        return None
    small = sitk.Shrink(image, [max(1, n // 96) for n in image.GetSize()])
    body = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.BinaryThreshold(small, -500.0, 1e12, 1, 0)),
                                 sortByObjectSize=True) == 1
    index = np.argwhere(array_ijk(body) > 0)
    if not len(index):
        return None
    to_lps = np.asarray(body.GetDirection()).reshape(3, 3) * np.asarray(body.GetSpacing())  # D·diag(s)
    left_right = index @ to_lps[0]  # LPS x of every body voxel, up to the origin
    width = float(np.ptp(left_right)) + max(body.GetSpacing())
    return "head" if width < HEAD_WIDTH_MM else "body"


def model_for(fixed: sitk.Image) -> str:
    """The installed model :func:`register` uses for ``fixed`` when none is given: by its modality
    (:func:`image_modality`) and body region (:func:`image_region`, :func:`rcreg.models.default_model`);
    :data:`NO_MODEL`, with a warning, when every model of the modality is for another region."""
    modality = image_modality(fixed)
    region = image_region(fixed, modality)
    model = default_model(modality, region)
    if model == NO_MODEL:
        warnings.warn(f"no installed model is for {region} {modality} images: registering by refinement alone "
                      "(give --model to choose one)", stacklevel=3)
    return model


def refine_options(refine: RefineSpec, card: dict) -> RefineOptions:
    """The refinement to run: ``refine`` over the card's defaults (its ``"refinement"`` entry).

    ``None``: the card's defaults; an int: that many iterations with the card's defaults; a mapping:
    those fields over the card's defaults; :class:`~rcreg.refinement.RefineOptions`: as given.
    """
    if isinstance(refine, RefineOptions):
        return refine
    fields = dict(card.get("refinement") or {})
    if isinstance(refine, bool):
        raise TypeError("refine must be a number of iterations, a mapping of options or RefineOptions")
    if isinstance(refine, int):
        fields["iterations"] = refine
    elif isinstance(refine, Mapping):
        fields.update(refine)
    elif refine is not None:
        raise TypeError(f"refine must be a number of iterations, a mapping or RefineOptions, not {type(refine).__name__}")
    unknown = set(fields) - set(RefineOptions.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown refinement option(s): {', '.join(sorted(unknown))}")
    return RefineOptions(**fields)


#: The correlation metrics compare at most about this many fixed voxels (:func:`_correlations`).
CORRELATION_VOXELS = 2 ** 21


def _correlations(result: RegistrationResult) -> tuple[float, float, int]:
    """Pearson correlation of the fixed image with the moving image before registration (initial alignment
    only) and with the warped image, over the fixed voxels — on grids of more than :data:`CORRELATION_VOXELS`,
    over every s-th voxel along each axis (s = 2 for a 1 mm brain or a 256³ volume), where alone the "before"
    image is resampled (the full one costs 0.4 s at 256³ and serves nothing else). Returns both and s."""
    fixed = result.fixed
    stride = max(1, int(np.ceil((np.prod(fixed.GetSize()) / CORRELATION_VOXELS) ** (1 / 3) - 1e-9)))
    points = (slice(None, None, stride),) * 3
    before = (result.moving_on_fixed if stride == 1  # the cached "before" image, then served to whoever asks
              else resample(result.moving, fixed[points], result.initial_transform, keep_type=False))
    fixed_arr = sitk.GetArrayViewFromImage(fixed)[points]
    return (metrics.correlation(sitk.GetArrayViewFromImage(before), fixed_arr),
            metrics.correlation(sitk.GetArrayViewFromImage(result.warped)[points], fixed_arr), stride)


def _initial_refinement_flow(flow: Optional[torch.Tensor], grid: Optional[sitk.Image], finest: sitk.Image) -> torch.Tensor:
    """The network's flow (voxels of ``grid``) as a flow in voxels of the finest refinement grid (zero without one)."""
    if flow is None:
        return torch.zeros(1, 3, *finest.GetSize())
    return flow_on_grid(flow, grid, finest)


def register(
    moving: ImageLike,
    fixed: ImageLike,
    *,
    model: ModelSpec = None,
    cascades: Optional[int] = None,
    repeat: int = 1,
    device: str | torch.device = "auto",
    amp: Optional[bool] = None,
    symmetric: bool = False,
    flip_average: bool = False,
    moving_labels: Optional[ImageLike] = None,
    fixed_labels: Optional[ImageLike] = None,
    moving_points=None,
    fixed_points=None,
    mask: Optional[ImageLike] = None,
    initial_alignment: InitialAlignment = "none",
    refine: RefineSpec = None,
    dense_metrics: bool = False,
    progress: Optional[Progress] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> RegistrationResult:
    """Deformably register ``moving`` to ``fixed``: the network's field, refined on the pair itself.

    Args:
        moving, fixed: image files, DICOM folders or SimpleITK images; the result lives on ``fixed``'s grid.
        model: see :func:`rcreg.models.resolve_model`; default: the installed model for the fixed image's
            modality (:func:`image_modality`), else the only/default one; ``"none"``: refinement alone.
        cascades: use only the first k deformable cascades (default: all; docs/conventions.md#words).
        repeat: test-time shared-weight repeats of each cascade (1…:data:`rcreg.models.MAX_REPEAT`).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        amp: run the network under bf16 autocast (warping, composition and refinement stay fp32);
            ``None``: where the device computes bf16 natively (:func:`rcreg.models.native_bf16`) and the
            model is a cascade network (a network passed in gets its ``amp`` attribute back afterwards).
            Changes the network's field by ~0.01 voxel (docs/performance.md#bf16-network).
        symmetric: the network's field is the mean of its prediction and the inverse of its prediction for
            the swapped pair (:meth:`rcreg.models.Model.predict`): inverse-consistent to first order, almost no
            motion for an image registered to itself; twice the network's time (docs/registration.md#symmetric).
        flip_average: the network's field is the mean of its predictions for the pair as it is and mirrored along
            each grid axis (lower error and drift for the brain model, not for chest CT; four times the network's
            time; docs/registration.md#flip-average).
        moving_labels, fixed_labels: label maps on their image's grid (warped labels, Dice, HD95).
        moving_points, fixed_points: CSV paths or ``(N, 3)`` LPS-mm arrays; fixed points are mapped into
            moving space, and with both the landmark error is reported.
        mask: on the fixed grid; the network grid then covers its bounding box (else what the model
            card's ``grid.region`` says: docs/conventions.md#network-grid) and the refinement scores only
            inside it.
        initial_alignment: ``"none"`` (trust the physical coordinates), ``"geometry"`` or ``"mass"``
            (first translate the moving image so the centres of the fields of view / of mass coincide,
            for images from different scanners or subjects; the translation is part of the result).
        refine: test-time refinement (:mod:`rcreg.refinement`, :func:`refine_options`): ``None`` the
            model card's default, an int that many iterations, a mapping or :class:`RefineOptions`;
            ``0`` the network alone.
        dense_metrics: det J statistics on the fixed image's full grid (default: on the compact grid).
        progress: ``progress(fraction, message)`` as the run advances.
        cancel: ``cancel()`` returning true stops the refinement (checked every iteration).

    Returns:
        A :class:`RegistrationResult` (warped image, transform, inverse, metrics); ``.save(dir)`` writes it.

    Raises:
        rcreg.io.InputError: a missing, unreadable or invalid input, a pair that cannot fit in memory
            (one line naming the file).
        rcreg.checkpoint.CheckpointError: a model file that is not a valid rcreg checkpoint.
        rcreg.refinement.Cancelled: ``cancel()`` returned true.
        ValueError: an invalid option value.
    """
    report = progress or (lambda fraction, message: None)
    timings: dict[str, float] = {}

    def stage(name: str, start: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - start, 4)
        return now

    t = time.perf_counter()
    report(0.0, "reading images")
    moving_name = "moving image" if isinstance(moving, sitk.Image) else str(moving)
    fixed_name = "fixed image" if isinstance(fixed, sitk.Image) else str(fixed)
    fixed = as_image(fixed, "fixed image")
    moving = as_image(moving, "moving image")
    fixed_lab = read_label_map(fixed_labels, fixed) if fixed_labels is not None else None
    moving_lab = read_label_map(moving_labels, moving) if moving_labels is not None else None
    mask_img = read_label_map(mask, fixed) if mask is not None else None
    points_f = _as_points(fixed_points, "fixed points") if fixed_points is not None else None
    points_m = _as_points(moving_points, "moving points") if moving_points is not None else None
    if points_f is not None and points_m is not None and points_f.shape != points_m.shape:
        raise InputError(f"fixed and moving points differ in number: {len(points_f)} vs {len(points_m)}")
    _check_memory(fixed, moving, fixed_name)
    if model is None:
        model = model_for(fixed)
    resolved = None if model == NO_MODEL else resolve_model(model)
    card = resolved.card if resolved is not None else DEFAULT_CARD
    options = refine_options(refine, card)
    if resolved is None and options.iterations == 0:
        raise InputError("model 'none' registers by refinement alone: give refinement iterations > 0")
    if resolved is None and symmetric:
        raise InputError("symmetric averages the network's two directions: model 'none' has no network")
    if resolved is None and flip_average:
        raise InputError("flip_average averages the network's mirrored predictions: model 'none' has no network")
    dev = select_device(device)
    if amp is None:
        amp = resolved is not None and resolved.network is not None and native_bf16(dev)
    tune_allocator()
    t = stage("read", t)

    report(0.05, "preprocessing")
    shift = initial_translation(fixed, moving, initial_alignment, card, moving_name)
    start = sitk.Image(moving)  # the moving image seen at p − shift: start(p) = moving(p + shift)
    start.SetOrigin((np.asarray(moving.GetOrigin()) - shift).tolist())
    fixed_n, start_n = normalized_image(fixed, card), normalized_image(start, card)
    grid = flow = None
    if resolved is not None:
        grid = card_grid(card, fixed_n, start_n, mask_img)
        network_spacing = grid.GetSpacing()[0]
        _check_overlap(start, grid, moving_name)
        fixed_t, moving_t = on_grid(fixed_n, grid), on_grid(start_n, grid)
    t = stage("preprocess", t)

    network_share = 0.3 if options.iterations else 0.6
    if resolved is not None:
        report(0.1, f"running model {resolved.name} on {dev.type}")
        flow = resolved.predict(fixed_t, moving_t, cascades=cascades, repeat=repeat, device=dev, amp=amp,
                                symmetric=symmetric, flip_average=flip_average,
                                callback=lambda done, total: report(0.1 + network_share * done / total,
                                                                    f"cascade {done}/{total}"))
        t = stage("network", t)

    refinement = None
    if options.iterations:
        spacing = options.spacing or max(min(fixed.GetSpacing()), FINEST_REFINEMENT_MM)
        grids = refinement_grids(fixed, spacing, options.levels, mask_img)
        if resolved is None:
            _check_overlap(start, grids[-1], moving_name)
        initial_flow = _initial_refinement_flow(flow, grid, grids[-1])
        pyramid_f = [level.to(dev) for level in pyramid(fixed_n, grids)]
        pyramid_m = [level.to(dev) for level in pyramid(start_n, grids)]
        masks = None
        if mask_img is not None:
            masks = [(preprocess_labels(mask_img, g) > 0).float().to(dev) for g in grids]
        t = stage("refinement_preprocess", t)
        first = 0.1 + network_share
        refinement = refine_flow(pyramid_f, pyramid_m, initial_flow.to(dev), options, masks=masks, cancel=cancel,
                                 progress=lambda done, message: report(first + (0.75 - first) * done, message))
        flow = refinement.flow.cpu()
        grid = resized_grid(grids[-1], flow.shape[2:])
        t = stage("refine", t)

    report(0.75, "building the transforms")
    field = compact_displacement(flow, grid)
    transform = registration_transform(field, shift)
    t = stage("field", t)

    report(0.8, "resampling the moving image")
    warped = resample(moving, fixed, transform)
    warped_labels = resample(moving_lab, fixed, transform, labels=True) if moving_lab is not None else None
    mapped = np.array([transform.TransformPoint(p.tolist()) for p in points_f]) if points_f is not None else None
    t = stage("resample", t)

    report(0.9, "computing metrics")
    result = RegistrationResult(warped=warped, field=field, translation=shift, transform=transform, fixed=fixed,
                                moving=moving, warped_labels=warped_labels, mapped_points=mapped)
    correlation_before, correlation_after, correlation_stride = _correlations(result)
    interior = (slice(1, -1),) * 3  # the compact field without its one-voxel border
    detj = (field_jacobian_determinant(result.displacement) if dense_metrics
            else field_jacobian_determinant(field)[interior])
    result.metrics = {
        "model": resolved.name if resolved is not None else NO_MODEL,
        "cascades": cascades,
        "repeat": repeat,
        "device": dev.type,
        "amp": bool(amp and resolved is not None),
        "symmetric": bool(symmetric),
        "flip_average": bool(flip_average),
        "network_grid": ({"shape": list(fixed_t.shape[2:]), "spacing_mm": network_spacing,
                          "region": grid_region(card, mask_img)}
                         if resolved is not None else None),
        "refinement": ({**options.to_dict(), "levels_run": refinement.levels} if refinement is not None
                       else {"iterations": 0}),
        "transform_grid": {"shape": list(field.GetSize()), "spacing_mm": list(field.GetSpacing())},
        "initial_alignment": initial_alignment,
        "initial_translation_mm": shift.tolist(),
        "correlation_before": correlation_before,
        "correlation_after": correlation_after,
        "correlation_stride": correlation_stride,
        "jacobian_grid": "fixed" if dense_metrics else "transform",
        "folding_fraction": metrics.folding_fraction(detj),
        "sdlogj": metrics.sdlogj(detj),
        "jacobian_std": metrics.jacobian_std(detj),
    }
    if warped_labels is not None and fixed_lab is not None:
        before = resample(moving_lab, fixed, result.initial_transform, labels=True)
        result.metrics.update(_label_metrics(warped_labels, before, fixed_lab))
    if mapped is not None and points_m is not None:
        per_point, mean = metrics.landmark_error(mapped, points_m)
        _, mean_before = metrics.landmark_error(points_f + shift, points_m)
        result.metrics.update(landmark_error_mm=per_point.tolist(), landmark_error_mm_mean=mean,
                              landmark_error_mm_mean_before=mean_before)
    stage("metrics", t)
    result.metrics["timings_s"] = timings
    report(1.0, "done")
    return result
