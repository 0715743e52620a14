#!/usr/bin/env python
"""Score a trained model on labelled pairs for repeats r = 1..R: same as ``rcreg evaluate`` (see ``--help``)."""
import sys

from rcreg.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
