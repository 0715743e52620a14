"""Checkpoint files: model hyper-parameters + model card + weights, loadable with ``weights_only=True``.

A checkpoint is a plain dictionary saved with :func:`torch.save`::

    {"format": "rcreg", "version": 1,
     "model": {"base": "vtn", "n_cascades": 3, "affine": True, "width": 0.5, "affine_levels": 6,
               "affine_translation": "voxels"},  # RecursiveCascadeNetwork kwargs
     "card": {...},            # model card, see docs/model-card.md
     "state_dict": {...},      # tensors (fp32, or fp16 in exported inference files)
     "training": {...}}        # optional: optimiser, schedule, step, RNG state (training checkpoints only)

Nothing in it needs pickle code execution, so it is always read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

from .cascade import RecursiveCascadeNetwork
from .io import atomic_path

FORMAT = "rcreg"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not an rcreg checkpoint for this architecture."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def save_checkpoint(
    path: str | os.PathLike,
    model: RecursiveCascadeNetwork,
    card: dict,
    training: Optional[dict] = None,
    dtype: Optional[torch.dtype] = None,
) -> Path:
    """Write ``model``'s config, ``card`` and weights (cast to ``dtype`` if given) atomically to ``path``."""
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu()
             for k, v in model.state_dict().items()}
    ckpt = {"format": FORMAT, "version": VERSION, "model": dict(model.config), "card": card, "state_dict": state}
    if training is not None:
        ckpt["training"] = training
    return atomic_save(ckpt, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint dictionary safely (no pickle code execution); one-line errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "state_dict" not in ckpt:
        raise CheckpointError(f"not an rcreg checkpoint: {path}")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {ckpt['version']}, newer than this rcreg ({VERSION})")
    if isinstance(ckpt.get("model"), dict):
        for key, value in (("affine_levels", 6), ("affine_translation", "voxels")):
            ckpt["model"].setdefault(key, value)  # files written before the options existed: the paper's affine
    return ckpt


def model_from_checkpoint(
    ckpt: dict | str | os.PathLike, **runtime: Any
) -> tuple[RecursiveCascadeNetwork, dict]:
    """Build the network stored in ``ckpt`` (a dict or a path) and load its weights in fp32.

    ``runtime`` passes run-time options (``checkpoint``, ``amp``, ``channels_last``). Returns
    ``(model, card)``; the model is in eval mode.
    """
    source = ckpt if isinstance(ckpt, (str, os.PathLike)) else "<checkpoint>"
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    try:
        model = RecursiveCascadeNetwork(**ckpt["model"], **runtime)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    except (TypeError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {source} does not match its architecture {ckpt.get('model')}: {first}") from None
    return model.eval(), dict(ckpt.get("card", {}))
