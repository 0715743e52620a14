#!/usr/bin/env python
"""Accuracy benchmark: identity, affine, ours (cascades × repeats, with and without test-time refinement),
refinement alone, ANTs SyN and elastix, same machine and run.

    .venv/bin/python benchmarks/accuracy.py [--brain-model M] [--ct-model M] [--quick] [--output docs/benchmarks.md]

M is an installed model name or a checkpoint path (e.g. runs/brain_mr/last.pt). The real volumes come
from rcreg.data (fetched on first use, docs/data.md). Two kinds of cases, reported separately:

* synthetic: a held-out volume I with labels L; a known random smooth field u (pull-back, mm);
  fixed = I∘(id + u), moving = I. The exact answer is u: we report the error |û − u| in mm over the
  fixed foreground and the Dice of the warped labels.
* real: inter-subject pairs (Colin27 → MNI152 2009a with tissue labels; chest CT ↔ chest CT with
  lung/body masks), scored by Dice and HD95 of the warped labels.

Every method yields a pull-back displacement field (LPS mm, docs/conventions.md) on the fixed grid;
all metrics are computed from it the same way (rcreg.metrics, rcreg.fields). Writes the Markdown
report, a JSON of every number, and a plot next to the report. The parts: accuracy_cases.py (the
cases), accuracy_methods.py (methods as data, scoring), accuracy_report.py (tables, plot, summaries).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the accuracy_* parts beside this script

import rcreg  # noqa: E402
from rcreg.models import resolve_model, training_steps  # noqa: E402
from rcreg.registration import refine_options  # noqa: E402

from accuracy_cases import Case, build_cases  # noqa: E402
from accuracy_methods import methods, ours, score  # noqa: E402
from accuracy_report import write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_series(specs: list[str], cases: list[Case]) -> list[tuple[str, str, list[dict]]]:
    """Score each separately trained model with all its cascades, repeated r = 1…4 times (network only)."""
    infos = [(spec, model_summary(spec)) for spec in specs]
    out = []
    for case in cases if specs else []:
        rows = []
        for spec, info in infos:
            for r in range(1, 5):
                row = {"method": f"{info['n']} cascades ×{r}", "cascades": info["n"], "repeat": r,
                       "steps": info["steps"], "source": spec, **score(case, *ours(spec, info["n"], r)(case))}
                rows.append(row)
                print(f"{case.name:32s} series {row['method']:20s} Dice {row['dice_mean']:.3f}  "
                      f"corr {row['correlation']:.4f}", flush=True)
        out.append((case.name, case.kind, rows))
    return out


def previous_series(path: Path) -> tuple[list[tuple[str, str, list[dict]]], list[str], str]:
    """The series rows of an earlier report's JSON, its model sources and a note saying when they were measured."""
    if not path.is_file():
        return [], [], ""
    dump = json.loads(path.read_text(encoding="utf-8"))
    kinds = {c["name"]: c["kind"] for c in dump.get("cases", [])}
    series = [(s["case"], kinds.get(s["case"], "synthetic"), s["rows"]) for s in dump.get("series", [])]
    specs = sorted({r["source"] for _, _, rows in series for r in rows})
    note = (f" These rows are carried over from the run of {dump['env']['date']} (the series models are "
            "training outputs under runs/, not in this checkout; `--series` re-measures them).") if series else ""
    return series, specs, note


def model_summary(spec: str) -> dict:
    model = resolve_model(spec)
    card = model.card
    keys = ("name", "modality", "grid", "normalization", "cascades", "width", "level_widths", "refinement")
    summary = {k: card[k] for k in keys if k in card}
    training = card.get("training") or {}
    steps = summary["trained_steps"] = training_steps(card)
    summary["batch_size"] = (training.get("config") or {}).get("batch_size")
    summary["train"] = (training.get("data") or {}).get("train")
    return {"source": str(spec), "summary": json.dumps(summary, ensure_ascii=False), "steps": steps,
            "n": model.network.n_cascades if model.network is not None else None,
            "affine": model.network is not None and model.network.affine is not None,
            "default_refine": refine_options(None, card).iterations}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brain-model", default="brain_mr_t1", help="installed model name or checkpoint path")
    parser.add_argument("--ct-model", default="chest_ct", help="installed model name or checkpoint path")
    parser.add_argument("--previous", nargs=2, action="append", default=[], metavar=("NAME", "MODEL"),
                        help="an earlier model (checkpoint path) kept for comparison, e.g. --previous v1 "
                             "runs/keep/brain_mr_t1_v1.pt: its network-only and default rows, in its own "
                             "domain (from its card's modality)")
    parser.add_argument("--quick", action="store_true", help="coarser grids, fewer cases and rows (a smoke run)")
    parser.add_argument("--no-baselines", action="store_true", help="skip ANTs SyN and elastix")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every method")
    parser.add_argument("--series", nargs="*", default=[], metavar="M",
                        help="brain models trained separately with different cascade counts under one budget "
                             "(benchmarks/cascade_series.py), scored with repeats r = 1…4 on the brain cases; "
                             "without it the previous report's series rows are carried over, labelled as such")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    models = {"brain": model_summary(args.brain_model), "ct": model_summary(args.ct_model)}
    specs = {"brain": args.brain_model, "ct": args.ct_model}
    n_cascades = {d: m["n"] or 0 for d, m in models.items()}
    previous = {}
    for name, spec in args.previous:
        info = model_summary(spec)
        domain = "brain" if json.loads(info["summary"]).get("modality") == "MR" else "ct"
        previous[domain] = (name, spec, info["n"] or 0, info["default_refine"])
        models[f"{domain} ({name})"] = info
    load_before = os.getloadavg()[0]

    print("preparing cases …", flush=True)
    cases = build_cases(args.quick, args.seed)
    results = []
    for case in cases:
        info, rows = models[case.domain], []
        for method in methods(specs[case.domain], n_cascades[case.domain], info["affine"], info["default_refine"],
                              quick=args.quick, baselines=not args.no_baselines,
                              previous=previous.get(case.domain)):
            field, seconds = method.run(case)
            row = {**method.fields(), **score(case, field, seconds)}
            rows.append(row)
            print(f"{case.name:32s} {row['method']:44s} Dice {row['dice_mean']:.3f}  HD95 {row['hd95_mm']:.2f}  "
                  f"fold {row['folding_pct']:.3f}%  err {row.get('field_error_mm', float('nan')):.2f}  "
                  f"{seconds:.1f}s", flush=True)
        results.append((case, rows))
    json_path = args.output.with_name("benchmarks_accuracy.json")
    if args.series:
        series, series_specs, provenance = run_series(args.series, [c for c in cases if c.domain == "brain"]), args.series, ""
    else:
        series, series_specs, provenance = previous_series(json_path)
    env = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
                      f"torch {torch.__version__}, rcreg {rcreg.__version__}",
           "threads": args.threads,
           "load": f"load average {load_before:.2f} before the run and {os.getloadavg()[0]:.2f} after"}
    dump = {"env": env, "models": models,
            "cases": [{"name": c.name, "kind": c.kind, "domain": c.domain, "note": c.note, "rows": r}
                      for c, r in results],
            "series": [{"case": name, "rows": rows} for name, _, rows in series]}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dump, indent=1, default=float) + "\n", encoding="utf-8")
    command = "python benchmarks/accuracy.py" + " ".join([""] + (argv if argv is not None else sys.argv[1:]))
    write_report(results, series, series_specs, provenance, command, models, n_cascades, args.output, env)
    os.replace(tmp, json_path)
    print(f"wrote {args.output}, {json_path.name} and benchmarks_accuracy.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
