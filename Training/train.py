#!/usr/bin/env python
"""Train recursive cascaded networks: ``python Training/train.py --config Training/configs/FILE.yaml``.

Same as ``rcreg train``; ``--help`` lists every option. With no arguments it trains the small demo
configuration (Training/configs/demo.yaml) on the project's sample data into runs/demo-DATE-TIME
and prints where the checkpoint went. Several processes: ``torchrun --nproc_per_node=K Training/train.py --config ...``.
"""
import sys
import time
from pathlib import Path

from rcreg.cli import main

if __name__ == "__main__":
    demo = ["--config", str(Path(__file__).resolve().parent / "configs" / "demo.yaml"),
            "--output", f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"]
    argv = sys.argv[1:] or demo
    sys.exit(main(["train", *argv]))
