#!/usr/bin/env python
"""Training-recipe ablations for the default models, on one budget, scored network-only on held-out cases.

Every variant fine-tunes from the same start (a base config's ``init``: the bundled model — v1 when the
tables in docs/ablations.md were made, v2 for the brain since) for the same
number of steps, with the same data, seed and schedule; one variant changes one option of the base config
(Training/configs/brain_mr_v2.yaml or chest_ct_v2.yaml). Each model is then scored by ``rcreg.register``
with ``refine=0`` (the network alone) on the accuracy benchmark's held-out cases of its domain
(benchmarks/accuracy_cases.py) and on *self-registration*: an image registered to itself, where the right
answer is no motion (mean |u| over the image's foreground, mm). A finished variant is skipped and an
interrupted one resumed, so the command can be re-run; the table of every finished variant goes to
docs/ablations.md.

    .venv/bin/python benchmarks/ablations.py [--domain brain|ct] [--steps 1000] [--only NAME ...] [--jobs 2]
    .venv/bin/python benchmarks/ablations.py --domain brain --runs LABEL=MODEL ... [--title TITLE]
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Literal, Optional, get_args

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the accuracy_* parts beside this script

from rcreg import data  # noqa: E402
from rcreg.io import array_ijk  # noqa: E402
from rcreg.registration import register  # noqa: E402
from rcreg.training.config import TrainConfig, load_config  # noqa: E402
from rcreg.training.trainer import train  # noqa: E402

from accuracy_cases import Case, build_cases, isotropic  # noqa: E402
from accuracy_methods import identity, score  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
Domain = Literal["brain", "ct"]
BASES: dict[str, Path] = {"brain": ROOT / "Training/configs/brain_mr_v2.yaml",
                          "ct": ROOT / "Training/configs/chest_ct_v2.yaml"}
#: The bundled model of each domain (the start of every variant, and the reference row).
BUNDLED = {"brain": "brain_mr_t1", "ct": "chest_ct"}
#: Images registered to themselves (sample-data names; resampled to 2 / 2.5 mm like the benchmark cases).
SELF = {"brain": ("colin27_t1_brain", "colin27_t1"), "ct": ("lung2_ct",)}

#: The options of the v1 models' last training stage that differ from the v2 base configs.
V1_RECIPE: dict[str, dict] = {
    "brain": {"similarity": "pearson", "contrast": 0.0, "identity_pairs": 0.15,
              "train": "sample:fsl_mni152_1mm_brain,cat12_t1_brain,fsl_mni152_1mm_brain,cat12_t1_brain"},
    "ct": {"similarity": "pearson", "identity_pairs": 0.15, "ffd_amplitude": 5.0},
}
#: Variants: the options each changes in its domain's base config ({} = the base itself).
VARIANTS: dict[str, dict[str, dict]] = {
    "brain": {
        "base (ncc 7, reg 1, identity 0.2, contrast 0.5)": {},
        "pearson (v1 loss)": {"similarity": "pearson"},
        "ncc window 9": {"ncc_window": 9},
        "reg weight 0.5": {"reg_weight": 0.5},
        "reg weight 2": {"reg_weight": 2.0},
        "no identity pairs": {"identity_pairs": 0.0},
        "no contrast randomisation": {"contrast": 0.0},
        "grid 80³": {"grid": [80, 80, 80]},
        "diffeomorphic cascades": {"diffeomorphic": True},
        "lr 2e-5": {"lr": 2e-5},
        "v1 recipe continued (control)": V1_RECIPE["brain"],
    },
    "ct": {
        "base (ncc 7, reg 1, identity 0.25)": {},
        "pearson (v1 loss)": {"similarity": "pearson"},
        "no identity pairs": {"identity_pairs": 0.0},
        "lr 2e-5": {"lr": 2e-5},
        "v1 recipe continued (control)": V1_RECIPE["ct"],
    },
}


def slug(name: str) -> str:
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in name.split(" (")[0]).strip("_")


def variant_config(domain: Domain, name: str, steps: int, output: Path) -> TrainConfig:
    """The base config of ``domain`` with the variant's options, the shared budget and its own output."""
    values = load_config(BASES[domain])
    values.update(VARIANTS[domain][name])
    folder = output / domain / slug(name)
    values.update(iterations=steps, lr_steps=[int(steps * 0.8)], output=str(folder), save_every=100,
                  cache=str(output / domain / "cache"), threads=1, progress=False,
                  description=f"ablation {domain}: {name}, {steps} steps from {values.get('init')}")
    values["resume"] = (folder / "last.pt").is_file()
    return TrainConfig(**values).check()


def _train(args: tuple[str, str, int, str]) -> str:
    domain, name, steps, output = args
    config = variant_config(domain, name, steps, Path(output))
    export = Path(config.output) / "model_fp16.pt"
    if not export.is_file():
        train(config)
    return str(export)


@functools.lru_cache(maxsize=None)
def domain_cases(domain: Domain) -> tuple[Case, ...]:
    """The held-out benchmark cases of ``domain`` (built once per process)."""
    return tuple(case for case in build_cases(False, 0) if case.domain == domain)


@functools.lru_cache(maxsize=None)
def self_images(domain: Domain) -> tuple[tuple[str, sitk.Image, np.ndarray], ...]:
    """``(name, image, foreground)`` of the images of ``domain`` registered to themselves (read once)."""
    paths = data.fetch(list(SELF[domain]))
    out = []
    for name in SELF[domain]:
        image = isotropic(sitk.ReadImage(str(paths[name]), sitk.sitkFloat32), 2.0 if domain == "brain" else 2.5)
        values = array_ijk(image)
        low, high = np.percentile(values, 1), np.percentile(values, 99)
        out.append((name, image, values > low + 0.1 * (high - low)))
    return tuple(out)


def evaluate(domain: Domain, model: str, repeat: int = 1) -> dict:
    """Network-only scores of ``model`` (each cascade applied ``repeat`` times) on the held-out cases of
    ``domain`` and, under ``"self"``, the mean |u| (mm) over the foreground of each image registered to itself."""
    def field(moving: sitk.Image, fixed: sitk.Image) -> sitk.Image:
        return register(moving, fixed, model=model, repeat=repeat, refine=0, device="cpu").displacement

    rows = {case.name: score(case, field(case.moving, case.fixed), 0.0) for case in domain_cases(domain)}
    rows["self"] = {name: float(np.linalg.norm(array_ijk(field(image, image)), axis=-1)[foreground].mean())
                    for name, image, foreground in self_images(domain)}
    return rows


def table(domain: Domain, results: dict[str, dict], title: str) -> str:
    cases = [c for c in next(iter(results.values())) if c != "self"]
    header = ["variant"] + [f"{c}: {'field error mm / ' if 'known field' in c else ''}Dice" for c in cases] + \
             [f"{n} to itself: mean \\|u\\| mm" for n in SELF[domain]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, rows in results.items():
        cells = [name]
        for c in cases:
            r = rows[c]
            cells.append((f"{r['field_error_mm']:.2f} / " if "field_error_mm" in r else "") + f"{r['dice_mean']:.3f}")
        cells += [f"{rows['self'][n]:.2f}" for n in SELF[domain]]
        lines.append("| " + " | ".join(cells) + " |")
    return f"### {title}\n\n" + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", choices=get_args(Domain), default="brain")
    parser.add_argument("--steps", type=int, default=800, help="fine-tuning steps of every variant (the shared budget)")
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="variants trained at once (one CPU thread each)")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "ablations")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "ablations.md")
    parser.add_argument("--series", nargs="+", metavar="MODEL",
                        help="instead: score brain models (files or bundled names) trained separately with "
                             "different cascade counts (benchmarks/cascade_series.py), the first at repeats "
                             "r = 1…4, the others at r = 1")
    parser.add_argument("--runs", nargs="+", metavar="LABEL=MODEL",
                        help="instead: score these models (longer runs of a recipe; files or bundled names) beside "
                             "the bundled model, into the report's 'runs' section of --domain")
    parser.add_argument("--title", help="with --runs or --series: the section's title and key (default: DOMAIN: "
                        "longer runs, key runs-DOMAIN; the paper's claims, key series), so several tables coexist")
    args = parser.parse_args(argv)
    if args.series:
        return score_series(args.series, args.report, args.title)
    if args.runs:
        return score_runs(args.domain, dict(item.split("=", 1) for item in args.runs), args.report, args.title)
    names = args.only or list(VARIANTS[args.domain])
    jobs = [(args.domain, n, args.steps, str(args.output)) for n in names]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        pool.map(_train, jobs, chunksize=1)
    # The table has every finished variant (those of earlier runs too), in the order of VARIANTS.
    exports = {n: str(export) for n in VARIANTS[args.domain]
               if (export := args.output / args.domain / slug(n) / "model_fp16.pt").is_file()}
    results = score_beside_bundled(args.domain, exports, "(no fine-tuning)")
    raw = args.output / f"{args.domain}_results.json"
    raw.write_text(json.dumps(results, indent=1))
    section = table(args.domain, results, f"{args.domain} ({args.steps} steps each from `{BUNDLED[args.domain]}`)")
    publish(args.report, args.domain, section, f" ({raw})")
    return 0


def score_beside_bundled(domain: Domain, models: dict[str, str], note: str = "") -> dict[str, dict]:
    """:func:`evaluate` of the bundled model of ``domain`` (labelled with ``note``), then of ``{label: model}``."""
    import torch

    torch.set_num_threads(2)
    results = {f"bundled `{BUNDLED[domain]}` {note}".strip(): evaluate(domain, BUNDLED[domain])}
    results.update({label: evaluate(domain, model) for label, model in models.items()})
    return results


def publish(report: Path, key: str, section: str, where: str = "") -> None:
    """Write ``section`` as ``key``'s section of ``report`` and print it."""
    write_section(report, key, section)
    print(section)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}: {report}{where}")


def score_runs(domain: Domain, models: dict[str, str], report: Path, title: Optional[str] = None) -> int:
    """Network-only scores of training runs (``{label: model}``) beside the bundled model, in the
    ``runs-DOMAIN`` section titled "DOMAIN: longer runs", or in a section of its own for ``title``."""
    key = f"runs-{domain}" if title is None else f"runs-{domain}-{slug(title)}"
    publish(report, key, table(domain, score_beside_bundled(domain, models), title or f"{domain}: longer runs"))
    return 0


def score_series(models: list[str], report: Path, title: Optional[str] = None) -> int:
    """The paper's two claims with this recipe: separately trained cascade counts (r = 1), and shared-weight
    repeats r = 1…4 of the first model, network-only on the brain cases."""
    import torch

    from rcreg.models import resolve_model, training_steps

    torch.set_num_threads(2)
    results = {"identity (no registration)": {
        **{case.name: score(case, identity(case)[0], 0.0) for case in domain_cases("brain")},
        "self": {name: 0.0 for name in SELF["brain"]}}}
    cards = [resolve_model(model).card for model in models]
    for index, (model, card) in enumerate(zip(models, cards)):
        for repeat in (range(1, 5) if index == 0 else (1,)):
            steps = f"{training_steps(card)} steps" + (" in all" if card["training"].get("init") else "")
            label = f"{card['cascades']} cascades × {repeat} ({steps})"
            results[label if label not in results else f"{label} [{model}]"] = evaluate("brain", model, repeat)
    grid = cards[0]["grid"]["shape"][0]
    key = "series" if title is None else f"series-{slug(title)}"
    write_section(report, key, table("brain", results, title or f"The paper's claims with the v2 recipe ({grid}³ "
                                                                 "grid, trained from scratch, one budget)"))
    print(f"{time.strftime('%Y-%m-%d %H:%M')}: {report}")
    return 0


def write_section(report: Path, domain: str, section: str) -> None:
    """Replace ``domain``'s section of ``report`` (between ``<!-- domain -->`` markers), keeping the others."""
    text = report.read_text() if report.is_file() else _HEADER
    start, end = f"<!-- {domain} -->", f"<!-- /{domain} -->"
    block = f"{start}\n{section}{end}"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    report.write_text(text)


_HEADER = """# Training-recipe ablations

Generated by `python benchmarks/ablations.py` (see its docstring). Every variant fine-tunes the bundled v1
model of its domain for the same number of steps from the same start, data, seed and schedule, changing one
option of the v2 base config (Training/configs/brain_mr_v2.yaml, chest_ct_v2.yaml); scores are the network
alone (`--refine 0`) on the held-out cases of benchmarks/accuracy.py (synthetic: field error against the
known field and Dice; real pairs: Dice) and on an image registered to itself (ideal: 0 mm). Numbers are one
run, one seed: differences of a few hundredths of a mm or Dice are within noise.
"""


if __name__ == "__main__":
    sys.exit(main())
