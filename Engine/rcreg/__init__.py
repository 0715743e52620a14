"""rcreg — Recursive Cascaded Networks for deformable 3D medical image registration.

Coordinate conventions: docs/conventions.md.
"""
from .cascade import CascadeOutput, RecursiveCascadeNetwork
from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .losses import RegistrationLoss
from .metrics import dice, folding_fraction, hausdorff, jaccard, jacobian_std, landmark_error, mean_score, sdlogj
from .networks import available_networks, build_network
from .spatial import affine_flow, compose, jacobian_determinant, warp
from .registration import RegistrationResult, register

__version__ = "0.1.0"

__all__ = [
    "CascadeOutput",
    "RecursiveCascadeNetwork",
    "CheckpointError",
    "load_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
    "RegistrationLoss",
    "dice",
    "folding_fraction",
    "hausdorff",
    "jaccard",
    "jacobian_std",
    "landmark_error",
    "mean_score",
    "sdlogj",
    "available_networks",
    "build_network",
    "affine_flow",
    "compose",
    "jacobian_determinant",
    "warp",
    "register",
    "RegistrationResult",
]
