#!/usr/bin/env python
"""Train the paper's cascade-count series at small scale: separate brain models with 1, 3 and 5 cascades.

Every model gets the same budget (same steps, data, augmentation, schedule, seed) from one base
config; only ``cascades`` differs, as in the paper's Table 2. The models are then scored by
``benchmarks/accuracy.py --series runs/cascade_series/cascades_*/model_fp16.pt`` next to the
baselines. A finished model is skipped and an interrupted one resumed, so the command can be re-run.

    .venv/bin/python benchmarks/cascade_series.py [--cascades 1 3 5] [--steps 1500] [--grid 48]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rcreg.training.config import TrainConfig, load_config
from rcreg.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def series_config(base: Path, cascades: int, steps: int, grid: int, output: Path, threads: int) -> TrainConfig:
    """``base`` with only the cascade count, budget, grid and output changed (no fine-tuning start)."""
    values = load_config(base)
    values.update(
        name=f"brain_series_{cascades}", cascades=cascades, iterations=steps, lr_steps=[int(steps * 0.8)],
        grid=[grid] * 3, init=None, output=str(output / f"cascades_{cascades}"), threads=threads,
        identity_pairs=0.0,  # the base gained identity pairs after the series in docs/benchmarks.md was trained
        cache=str(output / "cache"), save_every=250, val_every=steps,
        description=f"cascade-count series: VTN width {values.get('width', 1.0)}, affine + {cascades} cascades, "
                    f"{grid}³ grid, {steps} steps",
    )
    values["resume"] = (output / f"cascades_{cascades}" / "last.pt").is_file()
    return TrainConfig(**values).check()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=ROOT / "Training" / "configs" / "brain_mr_stage2.yaml",
                        help="config every model of the series starts from")
    parser.add_argument("--cascades", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--steps", type=int, default=1500, help="training steps of every model (the shared budget)")
    parser.add_argument("--grid", type=int, default=48, help="network grid edge (voxels)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "cascade_series")
    args = parser.parse_args(argv)
    for n in args.cascades:
        export = args.output / f"cascades_{n}" / "model_fp16.pt"
        if export.is_file():
            print(f"{export} exists: skipped", flush=True)
            continue
        config = series_config(args.base, n, args.steps, args.grid, args.output, args.threads)
        result = train(config)
        print(f"{n} cascade(s): {result.step} steps → {result.export}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
