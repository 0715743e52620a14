"""``rcreg register``: deformably register a moving image to a fixed image and write the results."""
from __future__ import annotations

import argparse
import sys

from ..options import ALIGNMENTS, NO_MODEL, OUTPUT_FILES, REGULARIZATIONS, SIMILARITIES, RefineOptions
from ..runtime import add_threads_argument

HELP = "Register a moving image to a fixed image (writes the warped image, transform and inverse, metrics, figure)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--moving", "-m", help="moving image file or DICOM series folder")
    parser.add_argument("--fixed", "-f", help="fixed image (defines the output space)")
    parser.add_argument("--pairs", help="CSV of pairs (columns moving, fixed[, moving_labels, fixed_labels, mask, name]) "
                        "to register with the model loaded once, instead of --moving/--fixed: one sub-folder per "
                        "pair, finished pairs skipped, summary.csv (docs/registration.md#cohorts)")
    parser.add_argument("--output-dir", "-o", required=True, help="folder for " + ", ".join(OUTPUT_FILES.values()))
    parser.add_argument("--model", help="installed model name (see `rcreg models`) or checkpoint file, or "
                        f"'{NO_MODEL}' (refinement alone); default: the installed model for the fixed image's modality")
    parser.add_argument("--cascades", type=int, help="use only the first N deformable cascades")
    parser.add_argument("--repeat", type=int, default=1, help="apply every cascade R times (test-time repeats)")
    parser.add_argument("--moving-labels", help="label map on the moving image's grid (warped; Dice/HD95 with --fixed-labels)")
    parser.add_argument("--fixed-labels", help="label map on the fixed image's grid")
    parser.add_argument("--moving-points", help="CSV of moving landmarks (columns x,y,z, LPS mm)")
    parser.add_argument("--fixed-points", help="CSV of fixed landmarks, mapped into moving space")
    parser.add_argument("--mask", help="fixed-space mask: the network grid covers its bounding box")
    parser.add_argument("--initial-alignment", default="none", choices=ALIGNMENTS,
                        help="first translate the moving image so the centres of the fields of view (geometry) or "
                        "of mass coincide — for images from different scanners or subjects (default: none)")
    refine = parser.add_argument_group("test-time refinement (on by default; docs/registration.md)")
    defaults = RefineOptions()
    refine.add_argument("--refine", type=int, metavar="ITERATIONS", dest="refine_iterations",
                        help="Adam iterations at the finest level (coarser levels run 2×, 4×, …); 0 = network only "
                        f"(default: the model card's, else {defaults.iterations})")
    refine.add_argument("--refine-similarity", choices=SIMILARITIES,
                        help=f"ncc (local), pearson (global correlation), mse or mi (CT, different contrasts); default {defaults.similarity}")
    refine.add_argument("--refine-weight", type=float, help=f"regularisation weight (default {defaults.weight})")
    refine.add_argument("--refine-regularization", choices=REGULARIZATIONS,
                        help=f"smoothness term (default {defaults.regularization})")
    refine.add_argument("--refine-folding-weight", type=float,
                        help=f"weight of the penalty on det J < 0.1 (default {defaults.folding_weight}; not with --diffeomorphic)")
    refine.add_argument("--refine-levels", type=int, help=f"pyramid levels (default {defaults.levels})")
    refine.add_argument("--refine-spacing", type=float, metavar="MM",
                        help="finest level spacing in mm (default: the fixed image's, but ≥ 1.5 mm)")
    refine.add_argument("--diffeomorphic", action="store_true", default=None,
                        help="refine a stationary velocity field (scaling and squaring): det J > 0")
    parser.add_argument("--device", default="auto", help="where the network and the refinement run: auto, cpu, cuda or "
                        "cuda:N (default auto: CUDA when available)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="run the network in bf16 (default: where the device computes bf16 natively)")
    parser.add_argument("--symmetric", action="store_true",
                        help="the network's field is the mean of its prediction and the inverse of the swapped pair's: "
                        "inverse-consistent, almost no motion for an image registered to itself (twice the network's time)")
    parser.add_argument("--flip-average", action="store_true",
                        help="the network's field is the mean of its predictions for the pair as it is and mirrored "
                        "along each axis: lower error and drift for the brain model (four times the network's time)")
    parser.add_argument("--dense-field", action="store_true",
                        help="also write displacement.nii.gz: the field on the fixed image's full grid (large)")
    parser.add_argument("--dense-metrics", action="store_true",
                        help="det J statistics on the fixed image's full grid (default: on the transform's grid)")
    parser.add_argument("--no-figure", action="store_true", help="do not draw figure.png")
    add_threads_argument(parser)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress messages")


def _progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def refine_arguments(args: argparse.Namespace) -> dict:
    """The refinement options given on the command line (the rest come from the model card)."""
    given = {"iterations": args.refine_iterations, "similarity": args.refine_similarity, "weight": args.refine_weight,
             "regularization": args.refine_regularization, "levels": args.refine_levels,
             "folding_weight": args.refine_folding_weight,
             "spacing": args.refine_spacing, "diffeomorphic": args.diffeomorphic}
    return {name: value for name, value in given.items() if value is not None}


def run(args: argparse.Namespace) -> int:
    from ..io import check_output_folder
    from ..registration import register
    from ..runtime import set_threads

    if (args.pairs and (args.moving or args.fixed)) or (not args.pairs and not (args.moving and args.fixed)):
        raise ValueError("give either --moving and --fixed, or --pairs")
    check_output_folder(args.output_dir, "--output-dir")  # before any work, not after it
    set_threads(args.threads)
    options = dict(model=args.model, cascades=args.cascades, repeat=args.repeat, device=args.device, amp=args.amp,
                   symmetric=args.symmetric, flip_average=args.flip_average, initial_alignment=args.initial_alignment,
                   refine=refine_arguments(args), dense_metrics=args.dense_metrics)
    save = dict(dense_field=args.dense_field, figure=not args.no_figure)
    if args.pairs:
        from ..cohort import print_progress, read_pairs, register_pairs

        if args.moving_labels or args.fixed_labels or args.moving_points or args.fixed_points or args.mask:
            raise ValueError("with --pairs, labels and masks are columns of the pairs file")
        summary = register_pairs(read_pairs(args.pairs), args.output_dir, save_options=save,
                                 progress=None if args.quiet else print_progress, **options)
        if not args.quiet:
            print(f"summary in {summary}", file=sys.stderr)
        return 0
    result = register(args.moving, args.fixed, moving_labels=args.moving_labels, fixed_labels=args.fixed_labels,
                      moving_points=args.moving_points, fixed_points=args.fixed_points, mask=args.mask,
                      progress=None if args.quiet else _progress, **options)
    out = result.save(args.output_dir, **save)
    if not args.quiet:
        m = result.metrics
        summary = f"correlation {m['correlation_before']:.3f} → {m['correlation_after']:.3f}"
        if "dice_mean" in m:
            summary += f", mean Dice {m['dice_mean_before']:.3f} → {m['dice_mean']:.3f}"
        print(f"{summary}; folding {m['folding_fraction']:.2%}; results in {out}", file=sys.stderr)
    return 0
