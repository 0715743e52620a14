#!/usr/bin/env python
"""Training throughput and peak memory of a 3-cascade VTN (+ affine) on the CPU (not a test).

Each configuration runs in a fresh subprocess: one warm-up step, then ``--steps`` timed training steps
exactly as ``rcreg.training`` does them (random augmentation of the moving image, intensity
augmentation, forward, the paper's loss, backward, the trainer's fused Adam), batch 1, on random volumes. Peak memory is
the subprocess's maximum resident set size (``resource.getrusage``), so each number includes the
Python/torch baseline (reported separately as the idle row). On a shared machine the wall-clock
rate depends on the load (the 1-minute load average at the start of the timed steps is reported);
the process CPU time per step divided by the thread count estimates the rate on idle cores.

    python benchmarks/training_throughput.py                # the table for docs/performance.md
    python benchmarks/training_throughput.py --sizes 64 --steps 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def child(spec: dict) -> dict:
    """Run one configuration in this process and return its measurements."""
    import torch

    torch.set_num_threads(spec["threads"])
    if spec.get("idle"):
        return {"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    from rcreg.cascade import RecursiveCascadeNetwork
    from rcreg.losses import RegistrationLoss
    from rcreg.training.augmentation import AugmentationSettings, augment_intensity, augment_spatial
    from rcreg.training.trainer import make_optimizer

    torch.manual_seed(0)
    n = spec["size"]
    model = RecursiveCascadeNetwork("vtn", 3, True, spec["width"], checkpointing=spec["checkpointing"],
                                    amp=spec["bf16"], channels_last=spec["channels_last"])
    optimizer = make_optimizer(model.parameters(), 1e-4)
    loss = RegistrationLoss()
    settings = AugmentationSettings()
    generator = torch.Generator().manual_seed(0)
    fixed, moving = torch.rand(2, 1, 1, n, n, n)

    def step() -> None:
        m, _ = augment_spatial(moving, None, settings, generator)
        f = augment_intensity(fixed, settings, generator)
        total, _ = loss(model(f, augment_intensity(m, settings, generator)), f)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    step()  # warm-up (allocations, kernel selection)
    load = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    seconds = (time.perf_counter() - start) / spec["steps"]
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (end.ru_utime + end.ru_stime - usage.ru_utime - usage.ru_stime) / spec["steps"]
    return {"s_per_step": seconds, "it_per_hour": 3600.0 / seconds, "cpu_s_per_step": cpu, "load": load,
            "maxrss_mb": end.ru_maxrss / 1024}


def run(spec: dict) -> dict:
    """Run ``spec`` in a fresh interpreter (so peak memory is its own)."""
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96], help="grid sizes (cubes)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    base = dict(threads=args.threads, steps=args.steps, checkpointing=False)
    variants = [("fp32", 1.0, False, False), ("bf16 + channels-last", 1.0, True, True),
                ("fp32", 0.5, False, False), ("bf16 + channels-last", 0.5, True, True)]
    idle = run(dict(base, idle=True))["maxrss_mb"]
    print(f"CPU: {os.cpu_count()} logical cores visible, {args.threads} torch threads; "
          f"{args.steps} timed steps after 1 warm-up; batch 1; idle process {idle:.0f} MB\n")
    print("| grid | width | precision | checkpointing | s/step (wall) | it/h (wall) | CPU s/step | "
          "it/h at CPU time / threads | load avg | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        rows = [(label, width, bf16, cl, False) for label, width, bf16, cl in variants]
        rows.append(("fp32", 1.0, False, False, True))
        for label, width, bf16, cl, ckpt in rows:
            r = run(dict(base, size=size, width=width, bf16=bf16, channels_last=cl, checkpointing=ckpt))
            head = f"| {size}³ | {width:g} | {label} | {'yes' if ckpt else 'no'} |"
            if "error" in r:
                print(f"{head} failed: {r['error'][:120]} ||||||", flush=True)
                continue
            print(f"{head} {r['s_per_step']:.2f} | {r['it_per_hour']:,.0f} | {r['cpu_s_per_step']:.2f} | "
                  f"{3600 * args.threads / r['cpu_s_per_step']:,.0f} | {r['load']:.1f} | {r['maxrss_mb']:,.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
