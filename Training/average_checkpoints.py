#!/usr/bin/env python
"""Average the weights of checkpoints of one training run into one inference file (fp32).

    python Training/average_checkpoints.py runs/x/step_8500.pt runs/x/step_9000.pt ... --output runs/x/averaged.pt

Checkpoints a few hundred steps apart late in a run: their mean is usually better than any one of them
(rcreg.training.state.average_checkpoints). The result is a checkpoint like any other: score it
(benchmarks/ablations.py --runs), bundle it (Training/bundle_model.py).
"""
from __future__ import annotations

import argparse
import sys

from rcreg.checkpoint import CheckpointError
from rcreg.cli import error_line
from rcreg.training.state import average_checkpoints


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="training checkpoints or inference files of one architecture")
    parser.add_argument("--output", "-o", required=True, help="the averaged inference file to write")
    args = parser.parse_args(argv)
    try:
        out = average_checkpoints(args.checkpoints, args.output)
    except CheckpointError as exc:
        print(f"average_checkpoints.py: error: {error_line(exc)}", file=sys.stderr)
        return 1
    print(f"wrote {out} (mean of {len(args.checkpoints)} checkpoints)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
