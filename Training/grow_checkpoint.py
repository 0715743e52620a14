#!/usr/bin/env python
"""Grow a trained cascade — wider levels, more cascades — without changing what it computes, as the start of a
larger model's training.

    python Training/grow_checkpoint.py runs/x/averaged.pt --level-widths 0.5 0.5 0.5 0.5 0.25 0.25 -o runs/x/wide.pt
    python Training/grow_checkpoint.py brain_mr_t1 --cascades 5 -o runs/x/deep.pt
    python Training/train.py --config ... --cascades 5 --init runs/x/deep.pt

Widening (rcreg.training.widening) copies every channel of a widened level and splits the weights of the
layers reading it among the copies; deepening (rcreg.training.deepening) appends cascades whose output layer
is zero and rescales the old ones for the new 1/n flow scale. Either way the written inference file (fp32)
gives the source's flow to float rounding, so fine-tuning starts from the source's accuracy instead of from
scratch. The card keeps the source's training history (``training.widened`` / ``training.deepened`` record
the change), so the steps behind the model still add up.
"""
from __future__ import annotations

import argparse
import sys

from rcreg.checkpoint import CheckpointError, save_checkpoint
from rcreg.cli import error_line
from rcreg.models import resolve_model
from rcreg.training.deepening import deepen_network
from rcreg.training.widening import widen_network


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="training checkpoint, inference file or installed model name")
    parser.add_argument("--output", "-o", required=True, help="the grown inference file to write")
    parser.add_argument("--width", type=float, help="new width of every network")
    parser.add_argument("--level-widths", type=float, nargs=6, metavar="W",
                        help="new width of each encoder level of the deformable networks, finest first")
    parser.add_argument("--cascades", type=int, help="new number of deformable cascades (appended after the old ones)")
    parser.add_argument("--noise", type=float, default=0.1,
                        help="how unequal the weight splits among a widened channel's copies are (default: 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of those splits (default: 0)")
    args = parser.parse_args(argv)
    widen = args.width is not None or args.level_widths is not None
    if not widen and args.cascades is None:
        parser.error("give --width, --level-widths and/or --cascades")
    try:
        source = resolve_model(args.checkpoint)
        model = source.network  # its held-out scores belong to it, not to the grown network
        card = {k: v for k, v in source.card.items() if k not in ("evaluation", "validation")}
        history = dict(card.get("training", {}))
        grown = model
        if widen:
            grown = widen_network(grown, width=args.width, level_widths=args.level_widths, noise=args.noise,
                                  seed=args.seed)
            history["widened"] = {"source": args.checkpoint, "noise": args.noise, "seed": args.seed,
                                  "from": {key: model.config[key] for key in ("width", "level_widths")}}
        if args.cascades is not None:
            history["deepened"] = {"source": args.checkpoint, "from": grown.n_cascades}
            grown = deepen_network(grown, args.cascades)
    except CheckpointError as exc:  # names the file
        print(f"grow_checkpoint.py: error: {error_line(exc)}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"grow_checkpoint.py: error: {args.checkpoint}: {error_line(exc)}", file=sys.stderr)
        return 1
    card.update({"width": grown.config["width"], "cascades": grown.n_cascades, "training": history,
                 **({"level_widths": grown.config["level_widths"]} if grown.config["level_widths"] else {})})
    save_checkpoint(args.output, grown, card)
    before, after = (sum(p.numel() for p in net.parameters()) for net in (model, grown))
    print(f"wrote {args.output}: {before / 1e6:.2f} → {after / 1e6:.2f} M parameters, "
          f"{model.n_cascades} → {grown.n_cascades} cascades")
    return 0


if __name__ == "__main__":
    sys.exit(main())
