"""``rcreg apply``: apply a saved transform to images, label maps and landmark points (as ANTs does)."""
from __future__ import annotations

import argparse
import sys

import numpy as np

HELP = "Apply a saved transform (transform.h5 or displacement.nii.gz) to an image, a label map or points."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transform", "-t", required=True, help="transform.h5 or displacement.nii.gz from `rcreg register`")
    parser.add_argument("--reference", "-r", help="image defining the output grid (the fixed image); needed for --image/--labels")
    parser.add_argument("--image", "-i", help="moving-space image to resample")
    parser.add_argument("--output", "-o", help="output image file (with --image)")
    parser.add_argument("--labels", help="moving-space label map to resample (nearest neighbour)")
    parser.add_argument("--output-labels", help="output label map file (with --labels)")
    parser.add_argument("--points", help="CSV of fixed-space points (x,y,z LPS mm) to map into moving space")
    parser.add_argument("--output-points", help="output CSV (with --points)")


def run(args: argparse.Namespace) -> int:
    from ..io import as_image, read_label_map, read_points, read_transform, write_image, write_points
    from ..registration import resample

    pairs = [(args.image, args.output, "--image", "--output"), (args.labels, args.output_labels, "--labels", "--output-labels"),
             (args.points, args.output_points, "--points", "--output-points")]
    for given, out, flag, out_flag in pairs:
        if bool(given) != bool(out):
            raise ValueError(f"{flag} and {out_flag} go together")
    if not any(given for given, *_ in pairs):
        raise ValueError("nothing to do: give --image/--output, --labels/--output-labels or --points/--output-points")
    if (args.image or args.labels) and not args.reference:
        raise ValueError("--reference is needed to resample an image or label map")
    transform = read_transform(args.transform)
    # Read every input before writing anything, so a bad input leaves no output behind.
    reference = as_image(args.reference) if args.reference else None
    image = as_image(args.image) if args.image else None
    labels = read_label_map(args.labels) if args.labels else None
    points = read_points(args.points) if args.points else None
    if image is not None:
        write_image(resample(image, reference, transform), args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    if labels is not None:
        write_image(resample(labels, reference, transform, labels=True), args.output_labels)
        print(f"wrote {args.output_labels}", file=sys.stderr)
    if points is not None:
        write_points(np.array([transform.TransformPoint(p.tolist()) for p in points]).reshape(-1, 3), args.output_points)
        print(f"wrote {args.output_points}", file=sys.stderr)
    return 0
