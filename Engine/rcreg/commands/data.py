"""``rcreg data list`` / ``rcreg data fetch [NAMES...] [--subset S]``: the sample-data catalogue (rcreg.data)."""
from __future__ import annotations

import argparse
import sys

from .. import data

HELP = "list or fetch the real sample volumes (verified, cached in $RCREG_DATA)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    lst = sub.add_parser("list", help="show the catalogue, subsets and what is cached")
    lst.add_argument("--subset", choices=sorted(data.SUBSETS), help="only the volumes of this subset")
    get = sub.add_parser("fetch", help="download, verify and cache volumes; prints name<TAB>path")
    get.add_argument("names", nargs="*", metavar="NAME", help="volume names (see `rcreg data list`)")
    get.add_argument("--subset", choices=sorted(data.SUBSETS), help="a named group of volumes (default: all)")
    get.add_argument("--force", action="store_true", help="download again even if cached")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        print(f"cache: {data.cache_dir()}")
        for name in data.resolve(subset=args.subset or "all"):
            vol = data.CATALOGUE[name]
            src = data.SOURCES[vol.source]
            cached = "cached" if (data.cache_dir() / vol.source / vol.filename).is_file() else "-"
            print(f"{name:26s} {vol.kind:11s} {cached:6s} {src.package} {src.version} ({src.licence.split(' ')[0]})"
                  f"  {vol.description}")
        print("subsets: " + ", ".join(f"{k} ({len(v)})" for k, v in data.SUBSETS.items()))
        return 0
    names = args.names or None
    subset = args.subset if (args.subset or names) else "all"
    paths = data.fetch(names, subset, force=args.force, progress=lambda m: print(m, file=sys.stderr))
    for name, file in paths.items():
        print(f"{name}\t{file}")
    return 0
