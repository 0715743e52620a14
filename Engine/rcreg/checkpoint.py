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
import pickle
import re
from pathlib import Path
from typing import Any, Optional

import torch

from .cascade import RecursiveCascadeNetwork
from .io import InputError, atomic_path, check_input_path

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


def _load_error(exc: Exception) -> str:
    """One line for why ``torch.load(weights_only=True)`` failed, without torch's advice to turn
    ``weights_only`` off (that would let the file run code)."""
    if isinstance(exc, pickle.UnpicklingError):
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        found = f" ({unsafe.group(1)})" if unsafe else ""
        return f"it holds Python objects other than tensors and plain data{found}, refused as they could run code"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _check_schema(ckpt: dict, path: Path) -> None:
    """Refuse a loaded rcreg checkpoint whose entries have the wrong types (one line naming ``path``)."""
    version = ckpt.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"checkpoint {path}: format version must be a positive integer, got {version!r}")
    if version > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, newer than this rcreg ({VERSION})")
    if "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path} has no 'model' entry (the network's hyper-parameters)")
    for key in ("model", "card", "training"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            raise CheckpointError(f"checkpoint {path}: '{key}' must be a dictionary, got {type(ckpt.get(key)).__name__}")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"checkpoint {path}: 'state_dict' must map parameter names to tensors")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint dictionary safely (no pickle code execution) and check its entries' types;
    one-line :class:`CheckpointError` naming the file otherwise."""
    try:
        path = check_input_path(path)
    except InputError as exc:
        raise CheckpointError(f"checkpoint {exc}") from None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_error(exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "state_dict" not in ckpt:
        raise CheckpointError(f"not an rcreg checkpoint: {path}")
    _check_schema(ckpt, path)
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
