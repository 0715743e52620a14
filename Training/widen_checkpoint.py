#!/usr/bin/env python
"""Widen a trained VTN cascade without changing what it computes, as the start of a wider model's training.

    python Training/widen_checkpoint.py runs/x/averaged.pt --level-widths 0.5 0.5 0.5 0.5 0.25 0.25 -o runs/x/wide.pt
    python Training/train.py --config ... --level-widths 0.5 0.5 0.5 0.5 0.25 0.25 --init runs/x/wide.pt

Every channel of a widened level is copied and the layers reading it split its weights among the copies
(rcreg.training.widening): the written inference file (fp32) gives the source's flow to float rounding, so
fine-tuning starts from the source's accuracy instead of from scratch. The card keeps the source's
training history (``training.widened`` records the change), so the steps behind the model still add up.
"""
from __future__ import annotations

import argparse
import sys

from rcreg.checkpoint import CheckpointError, model_from_checkpoint, save_checkpoint
from rcreg.cli import error_line
from rcreg.training.widening import widen_network


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="training checkpoint or inference file of a vtn cascade")
    parser.add_argument("--output", "-o", required=True, help="the widened inference file to write")
    parser.add_argument("--width", type=float, help="new width of every network")
    parser.add_argument("--level-widths", type=float, nargs=6, metavar="W",
                        help="new width of each encoder level of the deformable networks, finest first")
    parser.add_argument("--noise", type=float, default=0.1,
                        help="how unequal the weight splits among a channel's copies are (default: 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of those splits (default: 0)")
    args = parser.parse_args(argv)
    try:
        model, card = model_from_checkpoint(args.checkpoint)
        wide = widen_network(model, width=args.width, level_widths=args.level_widths, noise=args.noise,
                             seed=args.seed)
    except CheckpointError as exc:  # names the file
        print(f"widen_checkpoint.py: error: {error_line(exc)}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"widen_checkpoint.py: error: {args.checkpoint}: {error_line(exc)}", file=sys.stderr)
        return 1
    card = {**card, "width": wide.config["width"],
            **({"level_widths": wide.config["level_widths"]} if wide.config["level_widths"] else {})}
    narrow = {key: model.config[key] for key in ("width", "level_widths")}
    card["training"] = {**card.get("training", {}), "widened": {"source": args.checkpoint, "from": narrow,
                                                                "noise": args.noise, "seed": args.seed}}
    save_checkpoint(args.output, wide, card)
    before, after = (sum(p.numel() for p in net.parameters()) for net in (model, wide))
    print(f"wrote {args.output}: {before / 1e6:.2f} → {after / 1e6:.2f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
