"""Inference and training-step time and peak memory of RecursiveCascadeNetwork on this machine.

Each configuration runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own.
Prints a Markdown table (paste into docs/performance.md)::

    python benchmarks/cascade_speed.py                      # the full grid (≈ 15 min on 2 cores)
    python benchmarks/cascade_speed.py --sizes 64 --cascades 1 3
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import statistics
import subprocess
import sys
import time


def measure(mode: str, size: int, n: int, width: float, fast: bool, ckpt: bool, repeats: int) -> dict:
    """Run one configuration in this process; returns seconds (median) and peak RSS in MiB."""
    import torch

    from rcreg import RecursiveCascadeNetwork
    from rcreg.losses import RegistrationLoss

    torch.manual_seed(0)
    model = RecursiveCascadeNetwork("vtn", n, width=width, checkpointing=ckpt, amp=fast, channels_last=fast)
    fixed, moving = torch.rand(2, 1, 1, size, size, size).unbind(0)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    if mode == "inference":
        model.eval()
        with torch.inference_mode():
            for _ in range(repeats + 1):
                start = time.perf_counter()
                model(fixed, moving)
                times.append(time.perf_counter() - start)
    else:
        loss_fn = RegistrationLoss()
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
        for _ in range(repeats + 1):
            start = time.perf_counter()
            optimiser.zero_grad(set_to_none=True)
            loss, _ = loss_fn(model(fixed, moving), fixed)
            loss.backward()
            optimiser.step()
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": statistics.median(times[1:]), "peak_mib": peak, "base_mib": base_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--cascades", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--modes", nargs="+", default=["inference", "train"], choices=["inference", "train"])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-train-size", type=int, default=128, help="skip training steps above this size")
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._one:  # child process: one configuration
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(**json.loads(args._one), repeats=args.repeats)))
        return

    import torch

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads\n")
    print("| mode | size | cascades | width | precision | checkpointing | time (s) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, size, n, width in itertools.product(args.modes, args.sizes, args.cascades, args.widths):
        if mode == "train" and size > args.max_train_size:
            continue
        for fast, ckpt in itertools.product((False, True), (False, True) if mode == "train" else (False,)):
            config = dict(mode=mode, size=size, n=n, width=width, fast=fast, ckpt=ckpt)
            cmd = [sys.executable, __file__, "--_one", json.dumps(config), "--repeats", str(args.repeats),
                   "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                result = "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"| {mode} | {size}³ | {n} | {width} | {'bf16+CL' if fast else 'fp32'} | "
                      f"{'yes' if ckpt else 'no'} | {result} | |", flush=True)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"| {mode} | {size}³ | {n} | {width} | {'bf16+CL' if fast else 'fp32'} | "
                  f"{'yes' if ckpt else 'no'} | {r['seconds']:.2f} | {r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
