"""``rcreg apply``: apply a saved transform to images, label maps and landmark points (as ANTs does)."""
from __future__ import annotations

import argparse
import sys

import numpy as np
import SimpleITK as sitk

from ..runtime import add_threads_argument

HELP = "Apply saved transforms (transform.h5, inverse_transform.h5, displacement fields, linear) to images, labels or points."

#: ``--interpolation`` choice → SimpleITK interpolator (``label``: ITK's label-wise Gaussian, ANTs' GenericLabel).
INTERPOLATIONS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline,
                  "label": sitk.sitkLabelGaussian}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transform", "-t", required=True, action="append",
                        help="transform file (transform.h5 from `rcreg register`, a displacement field, an ITK linear "
                        "transform); repeat to compose them as ANTs does: the last one listed acts first on a point")
    parser.add_argument("--inverse", action="store_true",
                        help="apply the inverse of the (composed) transforms: an rcreg transform.h5 is inverted by the "
                        "inverse_transform.h5 beside it (and back), a linear transform exactly")
    parser.add_argument("--interpolation", "-n", choices=tuple(INTERPOLATIONS), default="linear",
                        help="for --image (default linear); 'label' also switches --labels from nearest neighbour to "
                        "label-wise Gaussian")
    parser.add_argument("--reference", "-r", help="image defining the output grid (the fixed image); needed for --image/--labels")
    parser.add_argument("--image", "-i", help="moving-space image to resample")
    parser.add_argument("--output", "-o", help="output image file (with --image)")
    parser.add_argument("--labels", help="moving-space label map to resample (nearest neighbour)")
    parser.add_argument("--output-labels", help="output label map file (with --labels)")
    parser.add_argument("--points", help="CSV of fixed-space points (x,y,z LPS mm) to map into moving space")
    parser.add_argument("--output-points", help="output CSV (with --points)")
    add_threads_argument(parser)


def _inverse(path: str, transform: sitk.Transform) -> sitk.Transform:
    """The inverse of a transform read from ``path``: its rcreg sibling file, or ITK's exact inverse."""
    from pathlib import Path

    from ..io import InputError, read_transform
    from ..options import OUTPUT_FILES

    names = {OUTPUT_FILES["transform"]: OUTPUT_FILES["inverse_transform"],
             OUTPUT_FILES["inverse_transform"]: OUTPUT_FILES["transform"]}
    name = Path(path).name
    if name in names and Path(path).with_name(names[name]).is_file():
        return read_transform(Path(path).with_name(names[name]))
    try:
        return transform.GetInverse()
    except RuntimeError:
        raise InputError(f"{path}: --inverse needs an invertible transform (a displacement field has no exact "
                         f"inverse: use the inverse_transform.h5 that `rcreg register` writes beside it)") from None


def chain(paths: list[str], inverse: bool = False) -> sitk.Transform:
    """The transforms of ``paths`` composed in ANTs' order (the last listed acts first on a point), or
    the inverse of that composition (each inverted, in the opposite order)."""
    from ..io import read_transform

    transforms = [read_transform(p) for p in paths]
    if inverse:
        transforms = [_inverse(p, t) for p, t in zip(paths, transforms)][::-1]
    if len(transforms) == 1:
        return transforms[0]
    composite = sitk.CompositeTransform(transforms[0])
    for transform in transforms[1:]:
        composite.AddTransform(transform)  # ITK applies the last added first
    return composite


def run(args: argparse.Namespace) -> int:
    from ..io import as_image, read_label_map, read_points, write_image, write_points
    from ..resampling import resample
    from ..runtime import set_threads

    set_threads(args.threads)
    pairs = [(args.image, args.output, "--image", "--output"), (args.labels, args.output_labels, "--labels", "--output-labels"),
             (args.points, args.output_points, "--points", "--output-points")]
    for given, out, flag, out_flag in pairs:
        if bool(given) != bool(out):
            raise ValueError(f"{flag} and {out_flag} go together")
    if not any(given for given, *_ in pairs):
        raise ValueError("nothing to do: give --image/--output, --labels/--output-labels or --points/--output-points")
    if (args.image or args.labels) and not args.reference:
        raise ValueError("--reference is needed to resample an image or label map")
    transform = chain(args.transform, args.inverse)
    # Read every input and compute every output before writing anything, so a bad input or a failing
    # step leaves no output behind.
    reference = as_image(args.reference) if args.reference else None
    image = as_image(args.image) if args.image else None
    labels = read_label_map(args.labels) if args.labels else None
    points = read_points(args.points) if args.points else None
    outputs = []
    if image is not None:
        outputs.append((resample(image, reference, transform, interpolator=INTERPOLATIONS[args.interpolation]),
                        args.output))
    if labels is not None:
        method = sitk.sitkLabelGaussian if args.interpolation == "label" else sitk.sitkNearestNeighbor
        outputs.append((sitk.Resample(labels, reference, transform, method, 0, labels.GetPixelID()), args.output_labels))
    mapped = None
    if points is not None:
        mapped = np.array([transform.TransformPoint(p.tolist()) for p in points]).reshape(-1, 3)
        if not np.isfinite(mapped).all():
            raise ValueError(f"{args.points}: some points map to non-finite positions")
    for result, path in outputs:
        write_image(result, path)
        print(f"wrote {path}", file=sys.stderr)
    if mapped is not None:
        write_points(mapped, args.output_points)
        print(f"wrote {args.output_points}", file=sys.stderr)
    return 0
