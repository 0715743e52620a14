#!/usr/bin/env python
"""Time per iteration of test-time refinement, per pyramid level, and of its operations.

    .venv/bin/python benchmarks/refinement_speed.py [--spacing 2.0 1.5] [--threads 2] [--repeats 3]

Registers the held-out Colin27 brain (rcreg.data, docs/data.md) to a known smooth deformation of
itself, resampled to each ``--spacing`` (mm), with the bundled brain model and the default
refinement, and prints for every level: grid, control grid, iterations run, seconds per iteration
(median of ``--repeats`` registrations). Then, at each level's size, the forward + backward time of
the pieces of one iteration: trilinear upsampling of the control grid, warping (grid_sample), local
NCC (5³, box filters by shifted additions, fixed statistics cached; on the whole grid, where the
registration scores only the informative box) and the whole iteration.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_cases import isotropic, smooth_field  # noqa: E402
from rcreg import data  # noqa: E402
from rcreg.fields import displacement_transform  # noqa: E402
from rcreg.losses import local_ncc_loss, local_statistics  # noqa: E402
from rcreg.refinement import control_shape, regularization_loss  # noqa: E402
from rcreg.registration import register  # noqa: E402
from rcreg.resampling import resample  # noqa: E402
from rcreg.runtime import tune_allocator  # noqa: E402
from rcreg.spatial import resize_flow, warp  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def operations(shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    """Forward + backward milliseconds of one iteration's pieces at a level of ``shape``."""
    fixed, moving = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    params = torch.zeros(1, 3, *control_shape(shape, 2), requires_grad=True)
    flow = torch.zeros(1, 3, *shape, requires_grad=True)
    warped = torch.rand(1, 1, *shape, requires_grad=True)
    stats = local_statistics(fixed, 5)

    def iteration():
        up = resize_flow(params, shape)
        loss = local_ncc_loss(fixed, warp(moving, up), 5, fixed_statistics=stats) + regularization_loss(params)
        loss.backward()

    pieces = {
        "upsample": lambda: resize_flow(params, shape).sum().backward(),
        "warp": lambda: warp(moving, flow).sum().backward(),
        "local NCC": lambda: local_ncc_loss(fixed, warped, 5, fixed_statistics=stats).backward(),
        "whole iteration": iteration,
    }
    return {name: 1000 * timed(fn, repeats) for name, fn in pieces.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, nargs="+", default=[2.0, 1.5], help="image spacings (mm)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    tune_allocator()
    colin = sitk.ReadImage(str(data.fetch(["colin27_t1_brain"])["colin27_t1_brain"]), sitk.sitkFloat32)
    print("| image | level | grid | control grid | iterations | ms / iteration | upsample | warp | local NCC | "
          "whole iteration (synthetic) |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for spacing in args.spacing:
        moving = isotropic(colin, spacing)
        fixed = resample(moving, moving, displacement_transform(smooth_field(moving, 12.0, 0)))
        runs = [register(moving, fixed, model="brain_mr_t1", device="cpu") for _ in range(args.repeats)]
        levels = runs[0].metrics["refinement"]["levels_run"]
        for index, level in enumerate(levels):
            per_iteration = statistics.median(1000 * r.metrics["refinement"]["levels_run"][index]["seconds"] /
                                              max(r.metrics["refinement"]["levels_run"][index]["iterations"], 1)
                                              for r in runs)
            ops = operations(tuple(level["shape"]), args.repeats)
            print(f"| Colin27 {spacing:g} mm {'×'.join(map(str, moving.GetSize()))} | {index + 1} | "
                  f"{'×'.join(map(str, level['shape']))} | {'×'.join(map(str, level['control_shape']))} | "
                  f"{level['iterations']} | {per_iteration:.1f} | {ops['upsample']:.1f} | {ops['warp']:.1f} | "
                  f"{ops['local NCC']:.1f} | {ops['whole iteration']:.1f} |", flush=True)
        total = statistics.median(r.metrics["timings_s"]["refine"] for r in runs)
        whole = statistics.median(sum(v for k, v in r.metrics["timings_s"].items() if k != "metrics") for r in runs)
        print(f"| Colin27 {spacing:g} mm | all | | | | refine {total:.2f} s; register {whole:.2f} s | | | | |")


if __name__ == "__main__":
    main()
