"""Accuracy benchmark report: tables, the Dice-against-time plot and the plain-language summaries.

Rows are the dictionaries of benchmarks/accuracy_methods.py (:meth:`Method.fields` + :func:`score`):
summaries select rows by their fields (family, cascades, repeat, refine), never by their labels.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from accuracy_cases import Case

Results = list[tuple[Case, list[dict]]]


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def table(case_rows: list[tuple[Case, list[dict]]], synthetic: bool) -> list[str]:
    head = "| case | method | Dice mean | " + " | ".join(["Dice " + n for n in ("per label",)]) + \
           " | HD95 mm |" + (" field error mm (mean / p95) |" if synthetic else "") + \
           " det J ≤ 0 % | SDlogJ | corr | time s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for case, rows in case_rows:
        for row in rows:
            per_label = ", ".join(f"{k} {_fmt(v, 2)}" for k, v in row["dice"].items())
            cells = [case.name, row["method"], _fmt(row["dice_mean"]), per_label, _fmt(row["hd95_mm"], 2)]
            if synthetic:
                cells.append(f"{_fmt(row.get('field_error_mm'), 2)} / {_fmt(row.get('field_error_p95_mm'), 2)}")
            cells += [_fmt(row["folding_pct"], 3), _fmt(row["sdlogj"], 3), _fmt(row["correlation"], 3),
                      _fmt(row["seconds"], 1)]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _colour(row: dict) -> str:
    if row["family"] != "ours":
        return "tab:red"
    if not row["network"]:
        return "tab:green"
    return "tab:purple" if row["refine"] else "tab:blue"


def plot(results: Results, path: Path) -> None:
    """One Dice-against-time panel per case (log time; identity as a dotted line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(results))
    rows_n = -(-len(results) // columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(4.2 * columns, 3.6 * rows_n), squeeze=False)
    for ax in axes.ravel()[len(results):]:
        ax.axis("off")
    for ax, (case, rows) in zip(axes.ravel(), results):
        for row in rows:
            if row["seconds"] <= 0:
                ax.axhline(row["dice_mean"], color="grey", ls=":", lw=1)
                continue
            ax.scatter(row["seconds"], row["dice_mean"], marker="o" if row["family"] == "ours" else "s",
                       color=_colour(row), s=16)
            if row["family"] != "ours" or row["refine"] or row["cascades"] in (0, None):
                ax.annotate(row["method"].replace("ours ", "").replace(" (default)", "*"),
                            (row["seconds"], row["dice_mean"]), fontsize=5)
        ax.set_xscale("log")
        ax.set_title(f"{case.name} ({case.kind})", fontsize=7)
        ax.set_xlabel("time (s, log)", fontsize=7)
        ax.set_ylabel("mean Dice", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle("blue: network only; purple: network + refinement (* default); green: refinement only; "
                 "red: ANTs SyN / elastix; dotted: identity", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def pick_row(rows: list[dict], **fields) -> Optional[dict]:
    """The first row whose fields equal ``fields``."""
    return next((r for r in rows if all(r.get(k, "") == v for k, v in fields.items())), None)  # "": older rows have no "previous"


def default_row(rows: list[dict]) -> Optional[dict]:
    """``rcreg register`` as a user runs it: all cascades once, the card's default refinement."""
    return pick_row(rows, family="ours", network=True, repeat=1, default_refine=True, diffeomorphic=False, previous="")


def network_row(rows: list[dict], n: Optional[int], previous: str = "") -> Optional[dict]:
    """The network alone, all ``n`` cascades once (of the earlier model ``previous``, if given; then any n)."""
    fields = {"cascades": n} if n is not None else {}
    return pick_row(rows, family="ours", network=True, repeat=1, refine=0, previous=previous, **fields)


def against_targets(results: Results, n_cascades: dict) -> list[str]:
    """Per case: the default registration and the network alone against ANTs SyN and the targets
    (Dice and field error at least SyN's, at most half its time — moonshot a tenth —, folding < 0.1 %)."""
    lines = []
    for case, rows in results:
        syn, mine = pick_row(rows, family="ANTs SyN"), default_row(rows)
        if syn is None or mine is None:
            continue
        speed = syn["seconds"] / mine["seconds"] if mine["seconds"] > 0 else float("inf")
        checks = {"Dice ≥ SyN": mine["dice_mean"] >= syn["dice_mean"],
                  "time ≤ ½ SyN": speed >= 2, "folding < 0.1 %": mine["folding_pct"] < 0.1}
        error = ""
        if "field_error_mm" in mine and "field_error_mm" in syn:
            checks["field error ≤ SyN"] = mine["field_error_mm"] <= syn["field_error_mm"]
            error = f", field error {mine['field_error_mm']:.2f} vs {syn['field_error_mm']:.2f} mm"
        missed = [name for name, ok in checks.items() if not ok]
        net = network_row(rows, n_cascades[case.domain])
        network = (f"; the network alone: Dice {net['dice_mean']:.3f}" +
                   (f", field error {net['field_error_mm']:.2f} mm" if "field_error_mm" in net else "") +
                   f" in {net['seconds']:.1f} s") if net else ""
        alone = pick_row(rows, family="ours", network=False, default_refine=True, diffeomorphic=False)
        if alone:  # the same refinement from the identity: what the network's start is worth on this CPU
            network += (f"; refinement alone (same budget, no network): Dice {alone['dice_mean']:.3f}" +
                        (f", field error {alone['field_error_mm']:.2f} mm" if "field_error_mm" in alone else "") +
                        f" in {alone['seconds']:.1f} s")
        earlier = next((r for r in rows if r.get("previous")), None)
        old = network_row(rows, None, earlier["previous"]) if earlier else None
        if old:
            network += (f" (the {old['previous']} model alone: Dice {old['dice_mean']:.3f}" +
                        (f", field error {old['field_error_mm']:.2f} mm" if "field_error_mm" in old else "") + ")")
        lines.append(
            f"- {case.name} ({case.kind}): default ({mine['method']}) Dice {mine['dice_mean']:.3f} vs SyN "
            f"{syn['dice_mean']:.3f} (Δ {mine['dice_mean'] - syn['dice_mean']:+.3f}){error}, {mine['seconds']:.1f} s vs "
            f"{syn['seconds']:.1f} s ({speed:.1f}× SyN's speed; moonshot 10×: {'met' if speed >= 10 else 'missed'}), "
            f"folding {mine['folding_pct']:.3f} % — " +
            ("meets every target" if not missed else "misses: " + ", ".join(missed)) + network + f" [{case.note}].")
    return lines


def _rising(values) -> bool:
    """True when ``values`` never decrease."""
    return all(b >= a for a, b in zip(values, values[1:]))


def claims(results: Results) -> list[str]:
    """Dice along k (cascades used) and correlation along r (repeats), network only, per case."""
    lines = []
    for case, rows in results:
        network = [r for r in rows if r["family"] == "ours" and r["network"] and not r["refine"] and r["cascades"]
                   and not r.get("previous")]
        if not network:
            continue
        n = max(r["cascades"] for r in network)
        by_k = sorted((r["cascades"], r["dice_mean"]) for r in network if r["repeat"] == 1)
        by_r = sorted((r["repeat"], r["correlation"]) for r in network if r["cascades"] == n)
        lines.append(
            f"- {case.name} ({case.kind}): Dice by cascades k = " + ", ".join(f"{k}: {v:.3f}" for k, v in by_k) +
            f" ({'rising' if _rising([v for _, v in by_k]) else 'not monotone'}); correlation by repeats r = " +
            ", ".join(f"{r}: {v:.4f}" for r, v in by_r) + f" ({'rising' if _rising([v for _, v in by_r]) else 'not monotone'}).")
    return lines


def series_report(series: list[tuple[str, str, list[dict]]], specs: list[str], provenance: str = "") -> list[str]:
    """The report section on separately trained cascade counts, from ``(case name, kind, rows)`` (empty
    when none were given); ``provenance`` says where the rows come from when not from this run."""
    if not series:
        return []
    steps = sorted({r["steps"] for _, _, rows in series for r in rows})
    lines = ["### Separately trained models: 1, 3, 5 cascades under one budget", "",
             f"Models ({', '.join(f'`{s}`' for s in specs)}) were trained by `benchmarks/cascade_series.py` with the "
             f"same data, augmentation, schedule, seed and number of steps ({', '.join(map(str, steps))}); only the "
             "number of cascades differs (the paper's Table 2 set-up, here at a 48³ grid on the CPU). Each is "
             "scored with all its cascades, repeated r = 1…4 times, network only." + provenance, "",
             "| case | cascades | Dice r=1 | Dice r=2 | Dice r=3 | Dice r=4 | corr r=1 | corr r=2 | corr r=3 | corr r=4 | "
             "det J ≤ 0 % (r=1) | time s (r=1) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for name, kind, rows in series:
        by_n: dict[int, dict[int, dict]] = {}
        for r in rows:
            by_n.setdefault(r["cascades"], {})[r["repeat"]] = r
        for n, reps in sorted(by_n.items()):
            cells = [name, str(n)] + [_fmt(reps[r]["dice_mean"]) for r in range(1, 5)] + \
                    [_fmt(reps[r]["correlation"], 4) for r in range(1, 5)] + \
                    [_fmt(reps[1]["folding_pct"], 3), _fmt(reps[1]["seconds"], 1)]
            lines.append("| " + " | ".join(cells) + " |")
        dice_n = [by_n[n][1]["dice_mean"] for n in sorted(by_n)]
        corr_r = {n: [reps[r]["correlation"] for r in range(1, 5)] for n, reps in by_n.items()}
        verdicts.append(
            f"- {name} ({kind}): Dice by trained cascades " +
            ", ".join(f"{n}: {d:.3f}" for n, d in zip(sorted(by_n), dice_n)) +
            f" ({'rising' if _rising(dice_n) else 'not monotone'}); correlation rising with r = 1…4 for " +
            (", ".join(f"{n} cascades" for n in sorted(by_n) if _rising(corr_r[n])) or "none of the models") + ".")
    return lines + [""] + verdicts + [""]


METHODS_TEXT = (
    "Methods: **identity** (no registration); **affine** (our model's affine cascade only, `--cascades 0`); "
    "**ours k×r** (`rcreg.register` with the first k deformable cascades, each repeated r times at test time, "
    "`--refine 0`: the network alone); **ours k×r + refine N** (the network's field refined on the pair itself "
    "for N iterations at the finest level, 4N and 2N at the two coarser ones: local NCC, diffusion regulariser, "
    "finest level at the fixed spacing — [registration.md](registration.md#test-time-refinement)); "
    "**(default)** is what `rcreg register` runs without options; **diffeomorphic** refines a stationary "
    "velocity field instead; **refinement only** starts from the identity (`--model none`: no network); "
    "**ANTs SyN** (antspyx `registration(type_of_transform=\"SyN\")`: its default affine initialisation then "
    "SyN, Mattes MI, 40×20×0 iterations); **elastix** (itk-elastix default `affine` then default `bspline` "
    "parameter maps)."
)

METRICS_TEXT = (
    "Metrics, all on the fixed image's grid from each method's pull-back displacement field: **Dice** of the "
    "moving labels warped by nearest neighbour; **HD95** (mm), mean over labels; **det J ≤ 0 %** share of "
    "folded voxels and **SDlogJ** (std of log det J) over the fixed foreground; **field error** (synthetic "
    "cases only) |û − u| in mm over the fixed foreground, mean and 95th percentile; **corr** the Pearson "
    "correlation of the warped moving image with the fixed image."
)


def write_report(results: Results, series: list[tuple[str, str, list[dict]]], series_specs: list[str],
                 series_provenance: str, command: str, models: dict, n_cascades: dict, output: Path,
                 env: dict) -> None:
    """Write the Markdown report and its figure (atomically: a temporary file renamed over ``output``)."""
    figure = output.with_name("benchmarks_accuracy.png")
    output.parent.mkdir(parents=True, exist_ok=True)
    plot(results, figure)
    synth = [(c, r) for c, r in results if c.kind == "synthetic"]
    real = [(c, r) for c, r in results if c.kind == "real"]
    summary = against_targets(results, n_cascades) or ["- (baselines skipped: no comparison)"]
    lines = [
        "# Accuracy benchmark",
        "",
        f"Generated by `{command}` on {env['date']} ({env['machine']}); every method ran in this same run on "
        f"this machine, {env['threads']} CPU thread(s) each, {env['load']}. Volumes and how they were held "
        "out: [data.md](data.md). Coordinates: [conventions.md](conventions.md).",
        "",
        METHODS_TEXT + " Time is the registration itself with its displacement field; for ours it also "
        "includes loading the model file, preprocessing and resampling (the whole `rcreg.register` call, "
        "metrics excluded); for the baselines, writing their input files is excluded.",
        "",
        "Models: " + "; ".join(f"{d}: `{m['source']}` (card: {m['summary']})" for d, m in models.items()) + ".",
        "",
        METRICS_TEXT,
        "",
        "## Against the targets",
        "",
        "Targets, every case, same run: with the default refinement Dice ≥ SyN's and field error ≤ SyN's, "
        "total time ≤ ½ of SyN's (moonshot: 1/10), det J ≤ 0 on < 0.1 % of voxels (none with the "
        "diffeomorphic option).",
        "",
        *summary,
        "",
        f"![Dice against time]({figure.name})",
        "",
        "## (a) Synthetic deformations of held-out real anatomy",
        "",
        "Each held-out volume I is deformed by a known random smooth field u (5³ cubic B-spline control "
        "points, displacements uniform in ±12 mm for brains, ±20 mm for CT): fixed = I∘(id + u), moving = I. "
        "These are **synthetic** deformations: they measure how well each method recovers a smooth, "
        "mono-modal deformation, not inter-subject accuracy. Labels: brain — three intensity classes "
        "(CSF-like, GM, WM) by k-means on brain voxels; CT — body and lungs (threshold recipe in "
        "benchmarks/accuracy_cases.py `ct_labels`).",
        "",
        *table(synth, synthetic=True),
        "",
        "## (b) Real inter-subject pairs",
        "",
        "**Real** pairs of different subjects; no ground-truth field exists, so only label overlap and "
        "regularity are reported. The moving image is first translated so the centroids of the two labelled "
        "foregrounds coincide (scanner coordinates of different patients need not overlap); every method, "
        "identity included, starts from that position. Brain labels are the same k-means tissue classes "
        "computed on each image; CT labels the same body/lung recipe on each image.",
        "",
        *table(real, synthetic=False),
        "",
        "Notes on the cases: " + "; ".join(f"{c.name}: {c.note}" for c, _ in results) + ".",
        "",
        "## The paper's claims at small scale",
        "",
        "Measured here within one trained model, network only: more of its cascades at test time (k = 1…n, "
        "r = 1) and shared-weight repeats of all n cascades (r = 1…4).",
        "",
        *claims(results),
        "",
    ]
    tmp = output.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines + series_report(series, series_specs, series_provenance)), encoding="utf-8")
    os.replace(tmp, output)
