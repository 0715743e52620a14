"""``rcreg`` command line: ``rcreg <command> --help``.

Each command lives in ``rcreg.commands.<name>`` and provides ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Errors print one line to stderr and exit 1.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import warnings
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
    "web": "rcreg.commands.web",
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


class Terminated(BaseException):
    """SIGTERM (what ``timeout``, ``kill`` and job schedulers send), raised where the process is so that
    every ``finally``/cleanup runs (staging folders, temporary files), as for Ctrl-C."""


def error_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none): how every interface of
    rcreg (this CLI, the web app, the training scripts) reports a failure."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals can only be set there
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        with warnings.catch_warnings():  # one line per warning, in the command's words, not file:line + source
            warnings.showwarning = lambda message, *rest, **kw: print(f"rcreg {args.command}: warning: {message}",
                                                                     file=sys.stderr)
            return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("rcreg: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("rcreg: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # the reader went away (`rcreg data list | head`): stop quietly, like Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 141
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"rcreg {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
