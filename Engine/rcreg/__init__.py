"""rcreg — Recursive Cascaded Networks for deformable 3D medical image registration.

Coordinate conventions: docs/conventions.md. The names below are imported on first use (PEP 562), so
``import rcreg`` and ``rcreg --help`` do not import torch.
"""
from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

#: public name → the module that defines it
_EXPORTS = {
    "CascadeOutput": "cascade",
    "RecursiveCascadeNetwork": "cascade",
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "model_from_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "RegistrationLoss": "losses",
    "dice": "metrics",
    "folding_fraction": "metrics",
    "hausdorff": "metrics",
    "jaccard": "metrics",
    "jacobian_std": "metrics",
    "landmark_error": "metrics",
    "mean_score": "metrics",
    "sdlogj": "metrics",
    "available_networks": "networks",
    "build_network": "networks",
    "affine_flow": "spatial",
    "compose": "spatial",
    "jacobian_determinant": "spatial",
    "warp": "spatial",
    "register": "registration",
    "RegistrationResult": "registration",
    "RefineOptions": "options",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
