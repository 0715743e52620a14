"""``rcreg web``: serve the browser front end (rcreg.web; needs the ``web`` extra: ``pip install -e '.[web]'``)."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

HELP = "Serve the browser front end on Slicer's slice views (127.0.0.1 unless --host; needs the web extra)."

# Import name → distribution of what the web app needs beyond the engine.
_NEEDED = {"trame": "trame", "trame_slicer": "trame-slicer", "slicer": "slicer-core"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..web.server import DEFAULT_HOST, DEFAULT_PORT

    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; "
                        "another one is reachable by others, and the app has no authentication)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--data", type=Path, metavar="DIR", help="folder whose volumes and label maps the page offers")


def run(args: argparse.Namespace) -> int:
    missing = [dist for name, dist in _NEEDED.items() if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: install the web extra (pip install -e '.[web]')")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0…65535, got {args.port}")
    if args.data is not None and not args.data.is_dir():
        raise ValueError(f"--data {args.data}: not a folder")
    from ..web.server import serve

    serve(args.host, args.port, args.data.resolve() if args.data else None)
    return 0
