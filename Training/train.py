#!/usr/bin/env python
"""Train recursive cascaded networks: ``python Training/train.py --config Training/configs/FILE.yaml``.

Same as ``rcreg train``; ``--help`` lists every option. Without ``--config`` it starts from the small
demo configuration (Training/configs/demo.yaml, the project's sample data) and applies the flags given
on top of it (``--iterations 20``); without ``--output`` it writes into runs/demo-DATE-TIME and prints
where the checkpoint went. Several processes: ``torchrun --nproc_per_node=K Training/train.py --config ...``.
"""
import sys
import time
from pathlib import Path

from rcreg.cli import main

DEMO = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def _given(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def demo_arguments(argv: list[str]) -> list[str]:
    """``argv`` with the demo config (and a fresh output folder) added where it names none."""
    if _given(argv, "--config"):
        return argv
    output = [] if _given(argv, "--output") else ["--output", f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"]
    return ["--config", str(DEMO), *output, *argv]


if __name__ == "__main__":
    sys.exit(main(["train", *demo_arguments(sys.argv[1:])]))
