"""Training state that must survive a restart: learning-rate schedule, random-number generators,
training checkpoints, and the export of a compact inference file.

Everything is stored as tensors and plain Python values so checkpoints load with
``torch.load(weights_only=True)`` (see rcreg.checkpoint).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..checkpoint import CheckpointError, model_from_checkpoint, save_checkpoint

__all__ = ["learning_rate", "step_generator", "capture_rng", "restore_rng", "export_inference", "average_checkpoints"]


def learning_rate(step: int, base: float, milestones: Sequence[int], factor: float = 0.5) -> float:
    """Learning rate of step ``step`` (0-based): ``base · factor^(number of milestones ≤ step)``."""
    return base * factor ** sum(1 for m in milestones if step >= m)


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, rank, step)``, well mixed by NumPy's SeedSequence.

    Drawing each step's pairs and augmentation from it makes a run reproducible from the step alone,
    for every process of a distributed run.
    """
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def capture_rng() -> dict:
    """The global torch (CPU and CUDA), NumPy and Python RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Restore what :func:`capture_rng` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export_inference(checkpoint: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write a compact inference file: the model and card of ``checkpoint`` with fp16 weights, no training state.

    The result loads with :func:`rcreg.checkpoint.model_from_checkpoint` (weights back to fp32).
    """
    model, card = model_from_checkpoint(checkpoint)
    return save_checkpoint(path, model, card, dtype=torch.float16)


def average_checkpoints(checkpoints: Sequence[str | os.PathLike], path: str | os.PathLike) -> Path:
    """Write an inference file (fp32, no training state) whose weights are the mean of ``checkpoints``'
    weights: checkpoints of one run a few hundred steps apart, whose average lies nearer the middle of
    the region the steps oscillate in (stochastic weight averaging, Izmailov et al. 2018). The networks
    have no normalisation statistics, so nothing needs recomputing. The card is the last checkpoint's,
    with ``training.averaged_steps`` listing the steps of all of them.

    Raises :class:`CheckpointError` (naming the file) for fewer than two checkpoints or ones whose
    architectures differ.
    """
    if len(checkpoints) < 2:
        raise CheckpointError(f"averaging needs at least two checkpoints, got {len(checkpoints)}")
    loaded = [model_from_checkpoint(c) for c in checkpoints]  # (network, card); one-line errors name the file
    first = loaded[0][0].config
    for (network, _), source in zip(loaded[1:], checkpoints[1:]):
        if network.config != first:
            raise CheckpointError(f"checkpoint {source} is a {network.config} model, not {first} like "
                                  f"{checkpoints[0]}: only checkpoints of one architecture can be averaged")
    average, card = loaded[-1]
    states = [network.state_dict() for network, _ in loaded]
    average.load_state_dict({k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
                             for k, v in states[-1].items()})
    card["training"] = {**card.get("training", {}),
                        "averaged_steps": [c.get("training", {}).get("iterations") for _, c in loaded]}
    return save_checkpoint(path, average, card)
