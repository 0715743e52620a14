"""``rcreg demo``: fetch the sample brain pair and register it with the bundled model (the README's main job)."""
from __future__ import annotations

import argparse

from ..runtime import add_threads_argument
from . import register as register_command

HELP = "Register the sample pair (Colin27 → MNI152 2009a, with the AAL atlas) with the bundled brain model."

MOVING, MOVING_LABELS, FIXED = "colin27_t1_brain", "colin27_aal", "mni2009a_t1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", "-o", default="output/demo", help="results folder (default: output/demo)")
    parser.add_argument("--model", default="brain_mr_t1", help="installed model name or checkpoint file")
    parser.add_argument("--repeat", type=int, default=1, help="apply every cascade R times (test-time repeats)")
    parser.add_argument("--device", default="auto", help="where the network and the refinement run: auto, cpu, cuda or "
                        "cuda:N (default auto: CUDA when available)")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from .. import data

    paths = data.fetch([MOVING, MOVING_LABELS, FIXED])
    parser = argparse.ArgumentParser(prog="rcreg demo")
    register_command.add_arguments(parser)  # the register command's own defaults apply
    registration = parser.parse_args([
        "--moving", str(paths[MOVING]), "--moving-labels", str(paths[MOVING_LABELS]), "--fixed", str(paths[FIXED]),
        "--output-dir", args.output_dir, "--model", args.model, "--repeat", str(args.repeat), "--device", args.device,
        *(["--threads", str(args.threads)] if args.threads else []),
    ])
    return register_command.run(registration)
