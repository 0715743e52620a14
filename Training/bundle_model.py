#!/usr/bin/env python
"""Install a trained checkpoint as a bundled model (Engine/rcreg/models/NAME.pt, fp16) with its held-out scores.

    python Training/bundle_model.py runs/brain_mr_stage2/last.pt brain_mr_t1 --domain brain \\
        [--evaluation docs/benchmarks_accuracy.json]

The model card keeps everything training wrote (docs/model-card.md) and gains ``evaluation``: for each
benchmark case of ``--domain`` (benchmarks/accuracy.py's JSON), the scores of the model with all its
cascades and no repeats — the setting `rcreg register` uses by default — next to identity and ANTs SyN.
Run the benchmark on the bundled file, then bundle again with ``--evaluation`` so the numbers belong to
these exact weights (the weights are not changed by re-bundling).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from rcreg.checkpoint import model_from_checkpoint, save_checkpoint
from rcreg.models import MODELS_DIR

KEYS = ("dice_mean", "hd95_mm", "field_error_mm", "folding_pct", "sdlogj", "correlation", "seconds")


def evaluation_summary(report: dict, domain: str, n_cascades: int) -> dict:
    """The card's ``evaluation`` entry from a benchmarks/accuracy.py JSON dump."""
    ours = f"ours {n_cascades}×1"
    cases = []
    for case in report["cases"]:
        if case["domain"] != domain:
            continue
        rows = {r["method"]: {k: r[k] for k in KEYS if k in r} for r in case["rows"]}
        if ours not in rows:
            raise ValueError(f"the benchmark has no '{ours}' row for {case['name']}: was it run on this model?")
        cases.append({"case": case["name"], "kind": case["kind"], "note": case["note"], "model": rows[ours],
                      "identity": rows.get("identity"), "ants_syn": rows.get("ANTs SyN")})
    return {"source": "docs/benchmarks.md", "date": report["env"]["date"], "setting": ours, "cases": cases}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="training checkpoint (last.pt/best.pt) or inference file")
    parser.add_argument("name", help="bundled model name (file Engine/rcreg/models/NAME.pt)")
    parser.add_argument("--domain", choices=("brain", "ct"), required=True, help="benchmark cases that score it")
    parser.add_argument("--evaluation", type=Path, help="benchmarks/accuracy.py JSON with this model's scores")
    parser.add_argument("--description", help="replace the card's one-line description")
    args = parser.parse_args(argv)
    model, card = model_from_checkpoint(args.checkpoint)
    card["name"] = args.name
    if args.description:
        card["description"] = args.description
    if args.evaluation:
        report = json.loads(args.evaluation.read_text(encoding="utf-8"))
        card["evaluation"] = evaluation_summary(report, args.domain, model.n_cascades)
    path = save_checkpoint(MODELS_DIR / f"{args.name}.pt", model, card, dtype=torch.float16)
    print(f"bundled {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
