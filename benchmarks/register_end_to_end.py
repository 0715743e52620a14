#!/usr/bin/env python
"""End-to-end time and output size of the ``rcreg register`` command for a large fixed volume.

    .venv/bin/python benchmarks/register_end_to_end.py [--size 256] [--model NAME|FILE] [--threads 2]
                                                     [--refine 0 …] [--device cpu]

Writes a synthetic fixed volume of ``size³`` voxels (oblique, 0.9 × 0.9 × 1.0 mm, int16, CT-like
values) and a moving volume on another grid (shifted, rotated pattern) as ``.nii.gz`` files, then runs
the command line — a fresh ``rcreg register`` process, default outputs — once per ``--refine`` value
(0: the network alone; ``default``: the model card's refinement). Prints a Markdown table per run:
the process's wall time, its stages from ``metrics.json`` (the rest is interpreter start-up, imports
and writing the outputs), and the size of every output file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

STAGES = ["read", "preprocess", "network", "refinement_preprocess", "refine", "field", "resample", "metrics"]


def rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def synthetic(size: int, spacing, direction: np.ndarray, shift) -> sitk.Image:
    """Blobs on a ``size³`` grid centred at the origin, as int16 (CT-like values), pattern moved by ``shift`` mm."""
    spacing = np.asarray(spacing, dtype=float)
    origin = -direction @ (spacing * (size - 1) / 2)
    axis = np.arange(size, dtype=np.float32)
    image = np.zeros((size, size, size), np.float32)  # (k, j, i)
    rng = np.random.default_rng(0)
    centres = rng.uniform(-0.3, 0.3, (12, 3)) * size * spacing
    for centre in centres:
        c = centre + np.asarray(shift)
        # Separable Gaussians in index space along each axis (the direction only rotates in-plane).
        index = np.linalg.solve(direction * spacing, c - origin)
        g = [np.exp(-((axis - index[a]) * spacing[a]) ** 2 / (2 * (0.06 * size) ** 2)) for a in range(3)]
        image += 800 * g[2][:, None, None] * g[1][None, :, None] * g[0][None, None, :]
    image += rng.normal(0, 10, image.shape).astype(np.float32) - 1000
    out = sitk.GetImageFromArray(image.astype(np.int16))
    out.SetSpacing(spacing.tolist())
    out.SetDirection(direction.ravel().tolist())
    out.SetOrigin(origin.tolist())
    return out


def run_cli(tmp: Path, args: argparse.Namespace, refine: str) -> tuple[float, dict, dict]:
    """One ``rcreg register`` process: (wall seconds, metrics.json timings, output sizes in MiB)."""
    out = tmp / f"out-{refine}"
    command = [sys.executable, "-m", "rcreg.cli", "register", "-m", str(tmp / "moving.nii.gz"), "-f",
               str(tmp / "fixed.nii.gz"), "-o", str(out), "--threads", str(args.threads), "--device", args.device, "-q"]
    if args.model:
        command += ["--model", args.model]
    if refine != "default":
        command += ["--refine", refine]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    sizes = {p.name: p.stat().st_size / 2 ** 20 for p in out.iterdir()}
    return wall, metrics, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="fixed volume size (voxels per axis)")
    parser.add_argument("--model", default="chest_ct",
                        help="model name or checkpoint (default chest_ct: the volumes are CT-like, 230 mm wide, which "
                        "rcreg register would take for a head and register by refinement alone)")
    parser.add_argument("--refine", nargs="+", default=["0", "default"], help="--refine values to run")
    parser.add_argument("--threads", type=int, default=2, help="torch and ITK threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sitk.WriteImage(synthetic(args.size, (0.9, 0.9, 1.0), rotation(0.2), (0, 0, 0)), str(tmp / "fixed.nii.gz"))
        sitk.WriteImage(synthetic(int(args.size * 0.85), (1.1, 1.1, 1.1), rotation(-0.1), (4, -3, 5)),
                        str(tmp / "moving.nii.gz"))
        runs = [(refine, *run_cli(tmp, args, refine)) for refine in args.refine]
    print(f"fixed {args.size}³ int16 (0.9×0.9×1.0 mm, oblique), moving {int(args.size * 0.85)}³ (1.1 mm); "
          f"`rcreg register` processes, {args.threads} threads on {args.device} "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs); torch {torch.__version__}, "
          f"SimpleITK {sitk.Version.VersionString()}; 1-minute load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after\n")
    print("| stage | " + " | ".join(f"--refine {r} (s)" for r, *_ in runs) + " |")
    print("|---|" + "---:|" * len(runs))
    for stage in STAGES:
        print(f"| {stage} | " + " | ".join(f"{m['timings_s'].get(stage, 0.0):.2f}" for _, _, m, _ in runs) + " |")
    print("| start-up, imports, writing outputs | " +
          " | ".join(f"{wall - sum(m['timings_s'].values()):.2f}" for _, wall, m, _ in runs) + " |")
    print("| **whole process** | " + " | ".join(f"**{wall:.2f}**" for _, wall, _, _ in runs) + " |")
    for refine, _, metrics, sizes in runs:
        print(f"\n--refine {refine}: model {metrics['model']}, transform grid {metrics['transform_grid']['shape']}; "
              f"outputs {sum(sizes.values()):.1f} MiB: " + ", ".join(f"{n} {mb:.1f}" for n, mb in sorted(sizes.items())))


if __name__ == "__main__":
    main()
