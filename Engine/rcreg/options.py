"""Options of the engine that its command line, the Slicer module and configs need without torch.

Refinement options (:class:`RefineOptions`, used by :mod:`rcreg.refinement`), the initial alignments, the body
regions of model cards, the most test-time repeats, the model name that means "no network", and the names of the files
:meth:`rcreg.registration.RegistrationResult.save` writes.
Importing this module imports neither torch nor SimpleITK.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Optional, get_args

__all__ = ["Similarity", "Regularization", "SIMILARITIES", "REGULARIZATIONS", "InitialAlignment", "ALIGNMENTS",
           "Region", "REGIONS", "GridRegion", "GRID_REGIONS", "RefineOptions", "check_ncc_window", "MAX_REPEAT", "NO_MODEL", "OUTPUT_FILES"]

Similarity = Literal["ncc", "pearson", "mse", "mi"]
Regularization = Literal["diffusion", "bending"]
SIMILARITIES: tuple[str, ...] = get_args(Similarity)
REGULARIZATIONS: tuple[str, ...] = get_args(Regularization)
#: Body region a model is for (its card's ``region``); ``rcreg register`` picks a model by modality and,
#: where it can tell (:func:`rcreg.registration.image_region`), by region: a head is never registered by
#: a body-only model.
Region = Literal["any", "head", "body"]
REGIONS: tuple[str, ...] = get_args(Region)
#: What a model's network grid covers (its card's ``grid.region``): the fixed image's whole field of view, or the
#: bounding box of both images' foreground plus a margin, so empty background costs no network voxels
#: (:func:`rcreg.preprocessing.foreground_region`).
GridRegion = Literal["image", "foreground"]
GRID_REGIONS: tuple[str, ...] = get_args(GridRegion)
#: How to place the moving image before registration (:func:`rcreg.preprocessing.initial_translation`).
InitialAlignment = Literal["none", "geometry", "mass"]
ALIGNMENTS: tuple[str, ...] = get_args(InitialAlignment)

#: Most test-time repeats per cascade: every application's flow is kept, and accuracy stops
#: improving after a few repeats (docs/benchmarks.md), so larger counts only exhaust memory.
MAX_REPEAT = 20

#: ``model=NO_MODEL`` registers by refinement alone, from the initial alignment (no network).
NO_MODEL = "none"

#: Files written by :meth:`RegistrationResult.save` (``warped_labels``/``mapped_points`` only when present,
#: ``displacement`` only with ``dense_field``, ``figure`` unless ``figure=False``).
OUTPUT_FILES = {
    "warped": "warped.nii.gz",
    "transform": "transform.h5",
    "inverse_transform": "inverse_transform.h5",
    "displacement": "displacement.nii.gz",
    "warped_labels": "warped_labels.nii.gz",
    "mapped_points": "mapped_points.csv",
    "metrics": "metrics.json",
    "figure": "figure.png",
}


def check_ncc_window(window: int) -> None:
    """Raise ``ValueError`` unless ``window`` (voxels) is a positive odd number: boxes are centred on voxels."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"local NCC window must be a positive odd number, got {window}")


@dataclass(frozen=True)
class RefineOptions:
    """How to refine (every field keyword-only; docs/registration.md lists the CLI flags).

    iterations: Adam steps at the finest level, each coarser level runs twice as many as the next
    finer one (0 = no refinement); levels: pyramid levels, each half the resolution of the next;
    spacing: finest level spacing in mm (``None``: the fixed image's finest spacing, but no finer than
    1.5 mm — see docs/performance.md); similarity: ``ncc`` (local, ``ncc_window``³ voxels), ``pearson``
    (global Pearson), ``mse``, ``mi`` (mutual information, for CT and pairs of different contrasts);
    regularization: ``diffusion`` (squared first derivatives) or ``bending`` (squared second
    derivatives) of the refinement, with ``weight``; control: control-point spacing in voxels of
    each level; learning_rate: Adam's step in control-grid voxels; tolerance: a level ends early
    when its loss fell by less than this fraction over the last ``_WINDOW`` iterations;
    folding_weight: weight of :func:`folding_loss` on the whole field (not with ``diffeomorphic``,
    which cannot fold); diffeomorphic: optimise a stationary velocity field integrated by scaling and squaring
    (det J > 0 for the refinement); samples: voxels drawn per iteration for the sampled
    similarities.
    """

    iterations: int = 10
    levels: int = 3
    spacing: Optional[float] = None
    similarity: Similarity = "ncc"
    ncc_window: int = 5
    regularization: Regularization = "diffusion"
    weight: float = 1.0
    control: int = 2
    learning_rate: float = 0.2
    tolerance: float = 1e-4
    folding_weight: float = 10.0
    diffeomorphic: bool = False
    samples: int = 32768

    def __post_init__(self):
        checks = [
            (self.iterations >= 0, f"refinement iterations must be ≥ 0, got {self.iterations}"),
            (self.levels >= 1, f"refinement levels must be ≥ 1, got {self.levels}"),
            (self.spacing is None or self.spacing > 0, f"refinement spacing must be > 0 mm, got {self.spacing}"),
            (self.similarity in SIMILARITIES,
             f"unknown refinement similarity {self.similarity!r}; choose one of {', '.join(SIMILARITIES)}"),
            (self.regularization in REGULARIZATIONS,
             f"unknown regularization {self.regularization!r}; choose one of {', '.join(REGULARIZATIONS)}"),
            (self.weight >= 0 and math.isfinite(self.weight), f"refinement weight must be ≥ 0, got {self.weight}"),
            (self.control >= 1, f"control-point spacing must be ≥ 1 voxel, got {self.control}"),
            (self.learning_rate > 0, f"learning rate must be > 0, got {self.learning_rate}"),
            (self.tolerance >= 0, f"tolerance must be ≥ 0, got {self.tolerance}"),
            (self.folding_weight >= 0 and math.isfinite(self.folding_weight),
             f"folding weight must be ≥ 0, got {self.folding_weight}"),
            (self.samples >= 64, f"samples must be ≥ 64, got {self.samples}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_ncc_window(self.ncc_window)

    def level_iterations(self) -> list[int]:
        """Iterations per level, coarse to fine."""
        return [self.iterations * 2 ** (self.levels - 1 - level) for level in range(self.levels)]

    def to_dict(self) -> dict:
        return asdict(self)
