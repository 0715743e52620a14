"""Training recursive cascades on image lists (``python Training/train.py`` / ``rcreg train``).

Modules: config (options), datasets (image lists, pairs, preprocessing cache), augmentation (random
smooth deformations, affine, intensity), trainer (the loop), state (schedule, RNG, export),
distributed (torchrun), logbook (CSV/TensorBoard), evaluation (scoring pairs), phantoms (synthetic data).
"""
from ..lazy import lazy_exports

_EXPORTS = {"AugmentationSettings": "augmentation", "random_affine": "augmentation",
            "random_smooth_field": "augmentation", "ConfigError": "config", "TrainConfig": "config",
            "export_inference": "state", "TrainResult": "trainer", "train": "trainer"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
