"""Accuracy benchmark methods and scoring: every method maps a case to a pull-back displacement field.

A :class:`Method` is data (its family, the cascades k, repeats r, refinement iterations, whether it is
diffeomorphic or uses no network) plus the function that runs it; labels are for display only.
:func:`score` turns a field into the report's metrics, the same way for every method.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import SimpleITK as sitk

from rcreg import metrics
from rcreg.fields import displacement_transform, field_jacobian_determinant
from rcreg.io import array_ijk
from rcreg.registration import NO_MODEL, register
from rcreg.resampling import resample

from accuracy_cases import Case

Family = Literal["identity", "ours", "ANTs SyN", "elastix"]
Runner = Callable[[Case], tuple[sitk.Image, float]]


@dataclass(frozen=True)
class Method:
    """One row of the benchmark. ``cascades``/``repeat``: the network's k × r (``None``: all cascades, no
    network when ``network`` is false); ``refine``: refinement iterations (``None``: the model card's
    default budget, 0: network only); ``diffeomorphic``: the velocity-field refinement."""

    family: Family
    run: Runner = dataclass_field(compare=False, repr=False)
    cascades: Optional[int] = None
    repeat: int = 1
    refine: Optional[int] = 0
    diffeomorphic: bool = False
    network: bool = True
    default_refine: int = 0  # the card's default budget, for labels
    previous: str = ""  # the name of an earlier model these rows are kept for (e.g. "v1"); "" = the current one

    @property
    def label(self) -> str:
        """Display name, e.g. ``ours 3×1``, ``ours 3×1 + refine 10 (default)``, ``refinement only 10``."""
        if self.family != "ours":
            return {"identity": "identity", "ANTs SyN": "ANTs SyN", "elastix": "elastix affine+B-spline"}[self.family]
        iterations = self.default_refine if self.refine is None else self.refine
        suffix = f" {iterations}" + (" (default)" if self.refine is None else "") + \
            (" diffeomorphic" if self.diffeomorphic else "")
        if not self.network:
            return "refinement only" + suffix
        base = "affine (ours, 0 cascades)" if self.cascades == 0 else f"ours {self.cascades}×{self.repeat}"
        return base + (" + refine" + suffix if iterations else "") + (f" [{self.previous} model]" if self.previous else "")

    def fields(self) -> dict:
        """The method as row fields (the JSON keeps these; nothing parses labels)."""
        return {"method": self.label, "family": self.family, "cascades": self.cascades, "repeat": self.repeat,
                "refine": self.default_refine if self.refine is None else self.refine,
                "default_refine": self.refine is None and self.family == "ours",
                "diffeomorphic": self.diffeomorphic, "network": self.network, "previous": self.previous}


def identity(case: Case) -> tuple[sitk.Image, float]:
    field = sitk.Image(case.fixed.GetSize(), sitk.sitkVectorFloat64, 3)
    field.CopyInformation(case.fixed)
    return field, 0.0


def ours(model: str, cascades: Optional[int], repeat: int, refine: Optional[int] = 0,
         diffeomorphic: bool = False) -> Runner:
    """rcreg.register with the first ``cascades`` deformable cascades repeated ``repeat`` times, then
    ``refine`` refinement iterations (``None``: the card's default; ``model`` may be ``"none"``)."""
    options = {} if refine is None else {"iterations": refine}
    if diffeomorphic:
        options["diffeomorphic"] = True

    def run(case: Case) -> tuple[sitk.Image, float]:
        start = time.perf_counter()
        result = register(case.moving, case.fixed, model=model, cascades=cascades, repeat=repeat, device="cpu",
                          refine=options)
        seconds = time.perf_counter() - start - result.metrics["timings_s"].get("metrics", 0.0)
        return result.displacement, seconds

    return run


def methods(spec: str, n: int, affine: bool, default_refine: int, *, quick: bool, baselines: bool,
            previous: Optional[tuple[str, str, int, int]] = None) -> list[Method]:
    """Every method of a domain whose model is ``spec`` (``n`` deformable cascades, an affine one if
    ``affine``; its card refines ``default_refine`` iterations by default). ``previous`` = (name, model,
    its n, its default refinement) of an earlier model, kept for comparison: its network alone and its
    default registration."""
    def mine(cascades, repeat=1, refine=0, diffeomorphic=False, model=spec, card_refine=default_refine, name=""):
        return Method("ours", ours(model, cascades if model != NO_MODEL else None, repeat, refine, diffeomorphic),
                      cascades, repeat, refine, diffeomorphic, model != NO_MODEL, card_refine, name)

    out = [Method("identity", identity)]
    if affine:
        out.append(mine(0))
    out += [mine(k) for k in (sorted({1, n}) if quick else range(1, n + 1)) if k >= 1]
    out += [mine(n, r) for r in ((2,) if quick else (2, 3, 4)) if n >= 1]
    budgets = (None,) if quick else (default_refine // 2, None, 2 * default_refine)
    out += [mine(n, refine=b) for b in budgets]
    out += [mine(n, refine=None, diffeomorphic=True), mine(None, refine=None, model=NO_MODEL)]
    if not quick:  # refinement alone at the network rows' other budgets, so every budget has both starts
        out += [mine(None, refine=b, model=NO_MODEL) for b in (default_refine // 2, 2 * default_refine)]
    if previous is not None:
        name, model, n_previous, refine_previous = previous
        out += [mine(n_previous, refine=refine, model=model, card_refine=refine_previous, name=name)
                for refine in (0, None)]
    if baselines:
        out += [Method("ANTs SyN", ants_syn), Method("elastix", elastix)]
    return out


def _write(image: sitk.Image, folder: Path, name: str) -> str:
    path = str(folder / name)
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), path)
    return path


def ants_syn(case: Case) -> tuple[sitk.Image, float]:
    """antspyx ``registration(type_of_transform="SyN")`` with its defaults (affine initialisation + SyN)."""
    import ants

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fixed = ants.image_read(_write(case.fixed, tmp, "fixed.nii.gz"))
        moving = ants.image_read(_write(case.moving, tmp, "moving.nii.gz"))
        start = time.perf_counter()
        reg = ants.registration(fixed, moving, type_of_transform="SyN", outprefix=str(tmp / "syn_"))
        composed = ants.apply_transforms(fixed, moving, reg["fwdtransforms"], compose=str(tmp / "composed_"))
        seconds = time.perf_counter() - start
        field = sitk.ReadImage(composed, sitk.sitkVectorFloat64)
    return _on_fixed_grid(field, case.fixed), seconds


def elastix(case: Case) -> tuple[sitk.Image, float]:
    """itk-elastix with its default ``affine`` then ``bspline`` parameter maps."""
    import itk

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fixed = itk.imread(_write(case.fixed, tmp, "fixed.nii.gz"), itk.F)
        moving = itk.imread(_write(case.moving, tmp, "moving.nii.gz"), itk.F)
        params = itk.ParameterObject.New()
        params.AddParameterMap(params.GetDefaultParameterMap("affine"))
        params.AddParameterMap(params.GetDefaultParameterMap("bspline"))
        start = time.perf_counter()
        _, transform = itk.elastix_registration_method(fixed, moving, parameter_object=params,
                                                       log_to_console=False)
        deformation = itk.transformix_deformation_field(moving, transform, output_directory=str(tmp))
        seconds = time.perf_counter() - start
        array = itk.GetArrayFromImage(deformation).astype(np.float64)  # (K, J, I, 3), LPS mm
        field = sitk.GetImageFromArray(array, isVector=True)
        field.SetOrigin(tuple(deformation.GetOrigin()))
        field.SetSpacing(tuple(deformation.GetSpacing()))
    return _on_fixed_grid(field, case.fixed), seconds


def _on_fixed_grid(field: sitk.Image, fixed: sitk.Image) -> sitk.Image:
    """Check a field read from disk lies on the fixed grid and give it the fixed grid's exact geometry."""
    if field.GetSize() != fixed.GetSize() or not np.allclose(field.GetSpacing(), fixed.GetSpacing(), atol=1e-4) \
            or not np.allclose(field.GetOrigin(), fixed.GetOrigin(), atol=1e-3):
        raise RuntimeError(f"displacement field grid {field.GetSize()} does not match the fixed image {fixed.GetSize()}")
    field.CopyInformation(fixed)
    return field


# ----------------------------------------------------------------------------- scoring


def score(case: Case, field: sitk.Image, seconds: float) -> dict:
    """Dice, HD95 (mm), share of det J ≤ 0 and SDlogJ (over the fixed foreground), field error (mm), time."""
    transform = displacement_transform(field)
    warped_labels = array_ijk(resample(case.moving_labels, case.fixed, transform, labels=True))
    target = array_ijk(case.fixed_labels)
    labels = sorted(case.label_names)
    dice = metrics.dice(warped_labels, target, labels)
    hd95 = metrics.hausdorff(warped_labels, target, spacing=case.fixed.GetSpacing(), percentile=95, labels=labels)
    detj = field_jacobian_determinant(field)
    fg = case.foreground
    row = {
        "dice": {case.label_names[k]: v for k, v in dice.items()},
        "dice_mean": metrics.mean_score(dice),
        "hd95_mm": metrics.mean_score(hd95),
        "folding_pct": 100.0 * metrics.folding_fraction(detj[fg]),
        "sdlogj": metrics.sdlogj(detj[fg]),
        "seconds": seconds,
    }
    if case.true_field is not None:
        err = np.linalg.norm(array_ijk(field) - array_ijk(case.true_field), axis=-1)[fg]
        row["field_error_mm"] = float(err.mean())
        row["field_error_p95_mm"] = float(np.percentile(err, 95))
    warped = array_ijk(resample(case.moving, case.fixed, transform))
    row["correlation"] = metrics.correlation(warped, array_ijk(case.fixed))
    return row
