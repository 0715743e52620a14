"""Training recursive cascades on image lists (``python Training/train.py`` / ``rcreg train``).

Modules: config (options), datasets (image lists, pairs, preprocessing cache), augmentation (random
smooth deformations, affine, intensity), trainer (the loop), state (schedule, RNG, export),
distributed (torchrun), logbook (CSV/TensorBoard), evaluation (scoring pairs), phantoms (synthetic data).
"""
from .augmentation import AugmentationSettings, random_affine, random_smooth_field
from .config import ConfigError, TrainConfig
from .state import export_inference
from .trainer import TrainResult, train

__all__ = ["AugmentationSettings", "random_affine", "random_smooth_field", "ConfigError", "TrainConfig",
           "export_inference", "TrainResult", "train"]
