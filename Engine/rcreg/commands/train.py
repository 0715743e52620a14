"""``rcreg train``: unsupervised training of recursive cascades (also ``python Training/train.py``)."""
from __future__ import annotations

import argparse

HELP = "train a recursive cascade on image lists (YAML config + flags; torchrun for several processes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training.config import add_arguments as add_config_arguments

    parser.epilog = ("Every option can be set in the YAML file given by --config (same names with underscores) and "
                     "overridden by its flag. Several processes: torchrun --nproc_per_node=K Training/train.py ...")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..training.config import config_from_args
    from ..training.trainer import report, train

    result = train(config_from_args(args))
    if result.last is not None:  # the main process reports
        report(result)
    return 0
