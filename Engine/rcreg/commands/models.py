"""``rcreg models``: list the installed registration models and their model cards."""
from __future__ import annotations

import argparse
import json

HELP = "List installed registration models with their model cards."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the cards as one JSON object")


def run(args: argparse.Namespace) -> int:
    from ..models import MODELS_DIR, list_models

    models = list_models()
    if args.json:
        print(json.dumps(dict(models), indent=2, ensure_ascii=False))
        return 0
    if not models:
        print(f"no models installed (add <name>.pt checkpoints to {MODELS_DIR}, or pass --model FILE)")
        return 0
    for name, card in models:
        print(f"{name}:")
        for key, value in card.items():
            print(f"  {key}: {json.dumps(value, ensure_ascii=False)}")
    return 0
