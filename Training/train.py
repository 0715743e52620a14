#!/usr/bin/env python
"""Train recursive cascaded networks: ``python Training/train.py --config Training/configs/FILE.yaml``.

Same as ``rcreg train``; ``--help`` lists every option. With no arguments it trains the small demo
configuration (Training/configs/demo.yaml) on the project's sample data and prints where the
checkpoint went. Several processes: ``torchrun --nproc_per_node=K Training/train.py --config ...``.
"""
import sys
from pathlib import Path

from rcreg.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:] or ["--config", str(Path(__file__).resolve().parent / "configs" / "demo.yaml")]
    sys.exit(main(["train", *argv]))
