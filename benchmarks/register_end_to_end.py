#!/usr/bin/env python
"""End-to-end time of ``rcreg register`` for a large fixed volume, stage by stage.

    .venv/bin/python benchmarks/register_end_to_end.py [--size 256] [--grid 128] [--cascades 3]
                                                     [--width 1.0] [--threads 2] [--device cpu]

Writes a synthetic fixed volume of ``size³`` voxels (oblique, 0.9 × 0.9 × 1.0 mm, int16) and a
moving volume on another grid (shifted, rotated pattern) as ``.nii.gz`` files, then registers them
with a randomly initialised ``RecursiveCascadeNetwork`` (affine + ``cascades`` VTN stages of the
given width on a ``grid³`` network grid — the same work as a trained model of that architecture) and
saves every output. Prints a Markdown table of per-stage times (read, preprocess, network, field to
physical, resample, metrics, write) and the peak resident memory.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from rcreg import RecursiveCascadeNetwork
from rcreg.registration import register

STAGES = [("read", "read (2 volumes)"), ("preprocess", "preprocess (normalise, resample to grid)"),
          ("network", "network"), ("field", "field to physical (full-resolution LPS field)"),
          ("resample", "resample (warped image)"), ("metrics", "metrics (det J, correlation)")]


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


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="fixed volume size (voxels per axis)")
    parser.add_argument("--grid", type=int, default=128, help="network grid size (voxels per axis)")
    parser.add_argument("--cascades", type=int, default=3, help="deformable VTN cascades (plus the affine one)")
    parser.add_argument("--width", type=float, default=1.0, help="channel width factor of the networks")
    parser.add_argument("--threads", type=int, default=2, help="torch and ITK threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sitk.WriteImage(synthetic(args.size, (0.9, 0.9, 1.0), rotation(0.2), (0, 0, 0)), str(tmp / "fixed.nii.gz"))
        sitk.WriteImage(synthetic(int(args.size * 0.85), (1.1, 1.1, 1.1), rotation(-0.1), (4, -3, 5)),
                        str(tmp / "moving.nii.gz"))
        network = RecursiveCascadeNetwork("vtn", n_cascades=args.cascades, width=args.width)
        network.card = {"name": "random-vtn", "grid": {"shape": [args.grid] * 3},
                        "normalization": {"type": "window", "min": -1000, "max": 400}}
        cpu_start = _cpu_seconds()
        start = time.perf_counter()
        result = register(tmp / "moving.nii.gz", tmp / "fixed.nii.gz", model=network, device=args.device)
        saved = time.perf_counter()
        result.save(tmp / "out")
        end = time.perf_counter()
        cpu = _cpu_seconds() - cpu_start
        sizes = {p.name: p.stat().st_size / 2 ** 20 for p in (tmp / "out").iterdir()}

    timings = result.metrics["timings_s"]
    rows = [(label, timings[key]) for key, label in STAGES] + [("write (all outputs)", end - saved)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"fixed {args.size}³ int16 (0.9×0.9×1.0 mm, oblique), moving {int(args.size * 0.85)}³; "
          f"network grid {args.grid}³; random VTN, affine + {args.cascades} cascades, width {args.width}; "
          f"{args.threads} threads on {args.device} ({platform.processor() or platform.machine()}); "
          f"torch {torch.__version__}, SimpleITK {sitk.Version.VersionString()}\n")
    print("| stage | seconds |\n|---|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} |")
    print(f"| **total** | **{end - start:.2f}** |")
    print(f"\nCPU time of register + save (user + system, all threads) {cpu:.0f} s; "
          f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} CPUs); peak resident memory {peak:.0f} MiB; output sizes: "
          + ", ".join(f"{name} {mb:.0f} MiB" for name, mb in sorted(sizes.items())))


if __name__ == "__main__":
    main()
