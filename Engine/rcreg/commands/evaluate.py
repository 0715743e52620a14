"""``rcreg evaluate``: score a checkpoint on labelled pairs for test-time repeats r = 1..R."""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from ..runtime import add_threads_argument

HELP = "score a model on a pair list (Dice, HD95, landmark error, folding, SDlogJ, time) for repeats 1..R"

_COLUMNS = ["dice", "hd95", "landmark_error", "folding_fraction", "sdlogj", "correlation", "time_s",
            "unregistered_dice", "unregistered_correlation", "unregistered_landmark_error"]  # the pair as given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="installed model name (see `rcreg models`) or checkpoint/inference file (.pt) written by training")
    parser.add_argument("--pairs", required=True,
                        help="pair list, CSV or JSON: fixed, moving[, fixed_labels, moving_labels, fixed_landmarks, "
                             "moving_landmarks] (landmarks: CSV of LPS mm points)")
    parser.add_argument("--repeats", type=int, default=1, metavar="R", help="score repeat factors r = 1..R (default 1)")
    parser.add_argument("--output", default="evaluation", help="folder for evaluation.csv, labels.csv, summary.json")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--cache", default=None, help="folder to cache preprocessed volumes (default: none)")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ..io import atomic_path
    from ..models import MAX_REPEAT, resolve_model, select_device
    from ..training.datasets import VolumeCache, read_pair_list
    from ..runtime import set_threads
    from ..training.evaluation import score_pair, mean_std, worse_than_unregistered

    if not 1 <= args.repeats <= MAX_REPEAT:
        raise ValueError(f"--repeats must be 1…{MAX_REPEAT}, got {args.repeats}")
    if not args.output.strip():
        raise ValueError("--output is empty: give a folder for the results")
    set_threads(args.threads)
    pairs = read_pair_list(args.pairs)
    device = select_device(args.device)
    resolved = resolve_model(args.model)
    model, card = resolved.network.to(device), resolved.card
    cache = VolumeCache(args.cache, card)
    rows, label_rows = [], []
    for index, pair in enumerate(pairs):
        fixed = cache.load(pair.fixed)
        moving = cache.load(pair.moving, fixed.grid)
        if index == 0:  # warm-up, so the first timing is not inflated by one-off set-up costs
            score_pair(model, fixed, moving, device=device, surface_distance=False)
        for r in range(1, args.repeats + 1):
            scores = score_pair(model, fixed, moving, repeat=r, device=device)
            rows.append({"pair": index, "fixed": fixed.name, "moving": moving.name, "repeat": r,
                         "cascades": f"{model.n_cascades}x{r}", **{k: scores[k] for k in _COLUMNS}})
            label_rows += [{"pair": index, "repeat": r, "label": label, **values}
                           for label, values in scores["per_label"].items()]
            print(f"pair {index} ({fixed.name} <- {moving.name}) r={r}: "
                  + ", ".join(f"{k} {scores[k]:.4g}" for k in _COLUMNS if not math.isnan(scores[k])))
            if worse_than_unregistered(scores):
                print(f"warning: pair {index} r={r}: {', '.join(worse_than_unregistered(scores))} worse than without "
                      "registration", file=sys.stderr)
    output = Path(args.output)
    for name, table in (("evaluation.csv", rows), ("labels.csv", label_rows)):
        if table:
            with atomic_path(output / name) as tmp, open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(table[0]))
                writer.writeheader()
                writer.writerows(table)
    summary = {f"r={r}": mean_std([row for row in rows if row["repeat"] == r], _COLUMNS)
               for r in range(1, args.repeats + 1)}
    with atomic_path(output / "summary.json") as tmp:
        tmp.write_text(json.dumps({"model": str(args.model), "pairs": len(pairs), "card_name": card.get("name"),
                                   "summary": {r: {k: {"mean": m, "std": s, "n": n} for k, (m, s, n) in v.items()}
                                               for r, v in summary.items()}}, indent=2), encoding="utf-8")
    print(f"{'r':>3} " + " ".join(f"{k:>22}" for k in _COLUMNS))
    for r, values in summary.items():
        print(f"{r[2:]:>3} " + " ".join(f"{m:>12.4g} ± {s:<7.3g}" for m, s, _ in values.values()))
    print(f"wrote {output / 'evaluation.csv'} and {output / 'summary.json'}")
    return 0
