#!/usr/bin/env python
"""The bundled networks in fp32 and in bf16 (``register(amp=...)``): time, and what bf16 changes in the field.

    .venv/bin/python benchmarks/network_precision.py [--threads 2] [--repeats 5]

For each bundled model, a held-out volume of its domain (docs/data.md: Colin27 at 2 mm for the brain model,
lung2 at 2.5 mm for the CT model) is registered to a known smooth deformation of itself (the accuracy
benchmark's generator) by the network alone and by the default registration, once per precision. Prints a
Markdown table: the network stage's seconds inside ``register`` and the whole registration's (medians of
``--repeats``), the mean field error against the known field over the fixed foreground, and the mean
distance between the bf16 and the fp32 fields there (mm). Then a second table: each network's forward pass
alone on its grid (the same volumes, under ``torch.inference_mode``) in fp32 and bf16, each with and without
the channels-last-3d memory format (medians of ``--repeats`` after a warm-up).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_cases import isotropic, smooth_field  # noqa: E402
from refinement_speed import timed  # noqa: E402
from rcreg import data  # noqa: E402
from rcreg.fields import displacement_transform  # noqa: E402
from rcreg.checkpoint import model_from_checkpoint  # noqa: E402
from rcreg.models import MODELS_DIR, native_bf16, resolve_model  # noqa: E402
from rcreg.preprocessing import grid_shape, network_grid, normalized_image, on_grid  # noqa: E402
from rcreg.registration import register  # noqa: E402
from rcreg.resampling import resample  # noqa: E402
from rcreg.runtime import set_threads  # noqa: E402

CASES = {"brain_mr_t1": ("colin27_t1_brain", 2.0, 12.0), "chest_ct": ("lung2_ct", 2.5, 20.0)}


def case(volume: str, spacing: float, amplitude: float) -> tuple[sitk.Image, sitk.Image, sitk.Image, np.ndarray]:
    """(moving, fixed, true pull-back field, fixed foreground as a (z, y, x) mask)."""
    image = isotropic(sitk.ReadImage(str(data.fetch([volume])[volume]), sitk.sitkFloat32), spacing)
    truth = smooth_field(image, amplitude, seed=0)
    fixed = resample(image, image, displacement_transform(truth))
    values = sitk.GetArrayFromImage(fixed)
    low = float(values.min())
    return image, fixed, truth, values > low + 0.1 * (float(values.max()) - low)


def mean_distance(a: sitk.Image, b: sitk.Image, mask: np.ndarray) -> float:
    return float(np.linalg.norm(sitk.GetArrayFromImage(a) - sitk.GetArrayFromImage(b), axis=-1)[mask].mean())


def forward_seconds(model: str, card: dict, moving: sitk.Image, fixed: sitk.Image,
                    repeats: int) -> dict[tuple[bool, bool], float]:
    """Median seconds of the network's forward pass per (amp, channels_last), on the grid of its ``card``."""
    grid = network_grid(fixed, grid_shape(card))
    f, m = (on_grid(normalized_image(image, card), grid) for image in (fixed, moving))
    out = {}
    for amp in (False, True):
        for channels_last in (False, True):
            network, _ = model_from_checkpoint(MODELS_DIR / f"{model}.pt", amp=amp, channels_last=channels_last)
            with torch.inference_mode():
                out[amp, channels_last] = timed(lambda: network(f, m), repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.machine()}, {args.threads} threads, "
          f"native bf16 on this CPU: {native_bf16(torch.device('cpu'))}\n")
    print("| model | refinement | precision | network (s) | registration (s) | field error (mm) | bf16 − fp32 (mm) |")
    print("|---|---|---|---:|---:|---:|---:|")
    cases = {model: case(*spec) for model, spec in CASES.items()}
    for model, (moving, fixed, truth, mask) in cases.items():
        for refine, label in ((0, "none"), (None, "default")):
            fields = {}
            for amp in (False, True):
                runs = [register(moving, fixed, model=model, refine=refine, device="cpu", amp=amp)
                        for _ in range(args.repeats + 1)][1:]  # the first run warms up
                network = statistics.median(r.metrics["timings_s"]["network"] for r in runs)
                total = statistics.median(sum(v for k, v in r.metrics["timings_s"].items() if k != "metrics")
                                          for r in runs)
                fields[amp] = runs[0].displacement
                change = f"{mean_distance(fields[True], fields[False], mask):.3f}" if amp else ""
                print(f"| {model} | {label} | {'bf16' if amp else 'fp32'} | {network:.3f} | {total:.2f} | "
                      f"{mean_distance(fields[amp], truth, mask):.3f} | {change} |", flush=True)
    print("\n| model | grid | fp32 (s) | fp32 + channels-last (s) | bf16 (s) | bf16 + channels-last (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for model, (moving, fixed, _, _) in cases.items():
        card = resolve_model(model).card
        seconds = forward_seconds(model, card, moving, fixed, args.repeats)
        shape = "×".join(map(str, grid_shape(card)))
        print(f"| {model} | {shape} | " + " | ".join(f"{seconds[key]:.3f}" for key in
              ((False, False), (False, True), (True, False), (True, True))) + " |", flush=True)


if __name__ == "__main__":
    main()
