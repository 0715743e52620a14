#!/usr/bin/env python
"""Install a trained checkpoint as a bundled model (Engine/rcreg/models/NAME.pt, fp16) with its held-out scores.

    python Training/bundle_model.py runs/brain_mr_stage2/last.pt brain_mr_t1 --domain brain \\
        [--evaluation docs/benchmarks_accuracy.json]

The model card keeps everything training wrote (docs/model-card.md) and gains ``evaluation``: for each
benchmark case of ``--domain`` (benchmarks/accuracy.py's JSON), the scores of the network alone (all its
cascades, no repeats, no refinement) and of the default registration (with the card's default
refinement, ``--refinement``), next to identity and ANTs SyN.
Run the benchmark on the bundled file, then bundle again with ``--evaluation`` so the numbers belong to
these exact weights (the weights are not changed by re-bundling).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from rcreg.checkpoint import model_from_checkpoint, save_checkpoint
from rcreg.cli import error_line
from rcreg.models import MODELS_DIR
from rcreg.options import REGIONS
from rcreg.registration import refine_options

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the benchmark's row selection
from accuracy_report import pick_row  # noqa: E402

KEYS = ("dice_mean", "hd95_mm", "field_error_mm", "folding_pct", "sdlogj", "correlation", "seconds")


def _row(rows: list[dict], **fields) -> Optional[dict]:
    """The scores of the current model's first benchmark row whose fields (accuracy_methods.Method.fields)
    equal ``fields`` (not the rows kept of an earlier model)."""
    found = pick_row(rows, previous="", **fields)
    return {k: found[k] for k in KEYS if k in found} if found is not None else None


def evaluation_summary(report: dict, domain: str, n_cascades: int) -> dict:
    """The card's ``evaluation`` entry from a benchmarks/accuracy.py JSON dump: per case of ``domain``,
    the network alone (all cascades, no repeats, no refinement), the default registration (with the
    card's default refinement), identity and ANTs SyN."""
    cases = []
    for case in report["cases"]:
        if case["domain"] != domain:
            continue
        rows = case["rows"]
        network = _row(rows, family="ours", network=True, cascades=n_cascades, repeat=1, refine=0)
        if network is None:
            raise ValueError(f"the benchmark has no network-only row with {n_cascades} cascades for {case['name']}: "
                             "was it run on this model?")
        cases.append({"case": case["name"], "kind": case["kind"], "note": case["note"], "model": network,
                      "model_refined": _row(rows, family="ours", network=True, cascades=n_cascades, repeat=1,
                                            default_refine=True, diffeomorphic=False),
                      "identity": _row(rows, family="identity"), "ants_syn": _row(rows, family="ANTs SyN")})
    return {"source": "docs/benchmarks.md", "date": report["env"]["date"],
            "setting": f"{n_cascades} cascades × 1; model_refined: with the card's default refinement", "cases": cases}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="training checkpoint (last.pt/best.pt) or inference file")
    parser.add_argument("name", help="bundled model name (file Engine/rcreg/models/NAME.pt)")
    parser.add_argument("--domain", choices=("brain", "ct"), required=True, help="benchmark cases that score it")
    parser.add_argument("--evaluation", type=Path, help="benchmarks/accuracy.py JSON with this model's scores")
    parser.add_argument("--description", help="replace the card's one-line description")
    parser.add_argument("--region", choices=REGIONS, help="the card's body region (rcreg register never uses a head "
                                                          "model on a body or the reverse)")
    parser.add_argument("--refinement", type=json.loads, metavar="JSON",
                        help="the card's default refinement options, e.g. '{\"weight\": 1.5}' (rcreg.refinement.RefineOptions)")
    args = parser.parse_args(argv)
    model, card = model_from_checkpoint(args.checkpoint)
    card["name"] = args.name
    if args.description:
        card["description"] = args.description
    if args.region:
        card["region"] = args.region
    if args.refinement is not None:
        refine_options(args.refinement, {})  # refuse unknown or invalid options before writing
        card["refinement"] = args.refinement
    if args.evaluation:
        report = json.loads(args.evaluation.read_text(encoding="utf-8"))
        card["evaluation"] = evaluation_summary(report, args.domain, model.n_cascades)
    path = save_checkpoint(MODELS_DIR / f"{args.name}.pt", model, card, dtype=torch.float16)
    print(f"bundled {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as exc:  # bad checkpoints, benchmark files, options: one line, no traceback
        print(f"bundle_model.py: error: {error_line(exc)}", file=sys.stderr)
        sys.exit(1)
