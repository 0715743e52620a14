"""``rcreg`` command line: ``rcreg <command> --help``.

Each command lives in ``rcreg.commands.<name>`` and provides ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Errors print one line to stderr and exit 1.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

# name → module; imported lazily so `rcreg --help` stays fast.
COMMANDS = {
    "register": "rcreg.commands.register",
    "apply": "rcreg.commands.apply",
    "models": "rcreg.commands.models",
    "data": "rcreg.commands.data",
    "train": "rcreg.commands.train",
    "evaluate": "rcreg.commands.evaluate",
    "demo": "rcreg.commands.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rcreg", description="Deformable 3D registration with recursive cascaded networks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("rcreg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`rcreg data list | head`): stop quietly, like Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 141
    except (ValueError, OSError, RuntimeError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"rcreg {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
