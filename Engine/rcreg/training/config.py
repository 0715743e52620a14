"""Training configuration: one flat table of options shared by YAML files and command-line flags.

A YAML file sets any of the keys below (``python Training/train.py --config FILE.yaml``); each key is
also a flag (``--cascades 5``) that overrides the file. Unknown keys are errors naming the file.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from ..options import MAX_REPEAT, GridRegion, Region, check_ncc_window

__all__ = ["TrainConfig", "ConfigError", "choices", "load_config", "add_arguments", "config_from_args"]


class ConfigError(ValueError):
    """A configuration file or value is invalid (one-line message naming the file or key)."""


def _opt(default: Any, help: str, group: str, **extra: Any):
    kwargs = {"default_factory": (lambda: list(default))} if isinstance(default, list) else \
             {"default_factory": (lambda: dict(default))} if isinstance(default, dict) else {"default": default}
    return field(metadata={"help": help, "group": group, **extra}, **kwargs)


@dataclass
class TrainConfig:
    """Every training option; defaults follow the paper (Zhao et al. 2019) where it fixes one."""

    # data
    train: Optional[str] = _opt(None, "training images: a folder, a glob pattern ('data/*.nii.gz'), a CSV or a JSON "
                                      "list (columns image[,labels,landmarks]; for mode paired fixed,moving[,fixed_labels,"
                                      "moving_labels]); several lists separated by ';' are pooled, and pairwise "
                                      "mode then pairs images only within one list (e.g. skull-stripped and "
                                      "skull-on scans)", "data")
    val: Optional[str] = _opt(None, "validation images or pairs in the same formats, with label maps; scored every "
                                    "--val-every steps (Dice picks the best checkpoint)", "data")
    mode: Literal["pairwise", "atlas", "paired"] = _opt(
        "pairwise", "pairwise: random pairs of training images; atlas: every image to the fixed --atlas (the paper's "
                    "brain set-up); paired: the explicit pairs of a pair list", "data")
    atlas: Optional[str] = _opt(None, "fixed atlas image for mode atlas", "data")
    atlas_labels: Optional[str] = _opt(None, "label map of the atlas (for validation Dice / Dice supervision)", "data")
    val_pairs: int = _opt(16, "most validation pairs scored (pairwise: consecutive images of the list)", "data")
    cache: Optional[str] = _opt(None, "folder for preprocessed volumes (default: OUTPUT/cache); reused across runs", "data")
    # model card
    name: str = _opt("custom", "model name written into the model card", "model card")
    description: str = _opt("", "one-line description for the model card", "model card")
    modality: str = _opt("unknown", "image modality for the model card (e.g. MR, CT)", "model card")
    region: Region = _opt("any", "body region for the model card: rcreg register never uses a head or a body "
                                 "model on the other region (any: no restriction)", "model card")
    grid: list[int] = _opt([128, 128, 128], "network grid size X Y Z (voxels; isotropic spacing covering the fixed image)",
                      "model card", nargs=3)
    grid_region: GridRegion = _opt("image", "what the network grid covers: image (the fixed image's field of view) or "
                                            "foreground (the bounding box of the images' foreground plus 8 mm: the "
                                            "grid's voxels go to the anatomy, not the background)", "model card")
    normalization: dict = _opt({"type": "percentile", "low": 1, "high": 99},
                               "intensity normalisation as JSON, e.g. '{\"type\": \"window\", \"min\": -1000, \"max\": 400}'",
                               "model card", type=json.loads)
    # model
    base: str = _opt("vtn", "deformable base network (vtn, voxelmorph)", "model")
    cascades: int = _opt(3, "number of deformable cascades n", "model")
    width: float = _opt(1.0, "channel width factor of every network (1 = the paper's VTN)", "model")
    level_widths: Optional[list[float]] = _opt(None, "width factor of each of the six VTN encoder levels of the "
                                               "deformable networks, finest first (default: width at every level; "
                                               "the affine network keeps width)", "model", nargs=6)
    affine: bool = _opt(True, "start with the affine cascade", "model")
    affine_levels: int = _opt(6, "encoder levels of the affine network, whose head reads the last one pooled to 2³ "
                                 "(6: the paper's, a 2³ map at a 128³ grid; use 5 for a 64³ grid)", "model")
    affine_translation: Literal["voxels", "extent"] = _opt(
        "voxels", "unit of the affine head's translation output: voxels (the paper's; learns about lr voxels per "
                  "step) or extent (half the grid extent)", "model")
    diffeomorphic: bool = _opt(False, "each deformable cascade predicts a stationary velocity field, integrated by "
                                      "scaling and squaring before composition (det J > 0 for smooth fields; not in "
                                      "the paper)", "model")
    # loss
    similarity: Literal["pearson", "ncc", "mse"] = _opt(
        "pearson", "similarity: pearson (the paper's global correlation), ncc (local) or mse", "loss")
    ncc_window: int = _opt(9, "side (voxels of the network grid, odd) of the local NCC boxes", "loss")
    reg_weight: float = _opt(1.0, "weight of the smoothness of every cascade's flow", "loss")
    det_weight: float = _opt(0.1, "weight of the affine determinant loss", "loss")
    ortho_weight: float = _opt(0.1, "weight of the affine orthogonality loss", "loss")
    affine_similarity: float = _opt(0.0, "weight of the similarity of the moving image warped by the affine cascade "
                                         "alone (not in the paper: gives the affine cascade its own objective)", "loss")
    dice_weight: float = _opt(0.0, "weight of a soft Dice loss on warped label maps (needs training labels)", "loss")
    field_weight: float = _opt(0.0, "weight of the endpoint error (voxels) of the network's flow against the true "
                                    "field, on the pairs where it is known (synthetic_pairs, identity_pairs) and, "
                                    "with a teacher, against the teacher's flow on the others", "loss")
    teacher: Optional[str] = _opt(None, "a model (installed name or checkpoint) whose flow, averaged at test time as "
                                        "teacher_symmetric / teacher_flip_average / teacher_repeat say, is the field "
                                        "loss's target on every pair whose true field is not known: distils that "
                                        "averaging into the single pass (not in the paper; needs field_weight)", "loss")
    teacher_symmetric: bool = _opt(True, "the teacher's flow is its symmetric one (rcreg register --symmetric)", "loss")
    teacher_flip_average: bool = _opt(True, "the teacher's flow is averaged over mirrored pairs (--flip-average)", "loss")
    teacher_repeat: int = _opt(1, "shared-weight repeats of the teacher's cascades (--repeat)", "loss")
    # augmentation
    ffd_amplitude: float = _opt(4.0, "largest displacement (voxels) of the random B-spline deformation of the moving "
                                     "image; 0 = off", "augmentation")
    ffd_control_points: int = _opt(5, "control points per axis of that deformation (the paper: 5)", "augmentation")
    rotation: float = _opt(10.0, "random rotation about each axis, ± degrees", "augmentation")
    scaling: float = _opt(0.1, "random per-axis scaling within [1/(1+s), 1+s]", "augmentation")
    translation: float = _opt(4.0, "random translation, ± voxels", "augmentation")
    augment_fixed: bool = _opt(False, "deform the fixed image too (its own random affine + B-spline field): with few "
                                      "training subjects the network otherwise sees only a handful of fixed images "
                                      "and memorises them", "augmentation")
    identity_pairs: float = _opt(0.0, "share of training pairs whose moving image is the (spatially augmented) fixed "
                                      "image itself, with its own intensity augmentation: teaches the network to "
                                      "output no deformation for aligned images (test-time repeats, later "
                                      "cascades)", "augmentation")
    synthetic_pairs: float = _opt(0.0, "share of training pairs made of one image and a known random deformation "
                                       "of it: fixed = the moving image after its spatial augmentation, moving = "
                                       "the image before it; the true field then supervises the flow "
                                       "(field_weight)", "augmentation")
    contrast: float = _opt(0.0, "share of pairs whose two images both get the same random intensity lookup table "
                                "(background kept dark; SynthMorph-like contrast randomisation: T1, T2, PD, ...)",
                           "augmentation")
    gamma: float = _opt(0.3, "random gamma exp(U(−g, g)) on both images", "augmentation")
    bias_field: float = _opt(0.3, "random smooth multiplicative bias field exp(±b) on both images", "augmentation")
    noise: float = _opt(0.02, "Gaussian noise with standard deviation up to this (intensities in [0, 1])", "augmentation")
    # optimisation
    iterations: int = _opt(100_000, "training steps", "optimisation")
    batch_size: int = _opt(4, "pairs per step and process", "optimisation")
    lr: float = _opt(1e-4, "Adam learning rate", "optimisation")
    lr_steps: list[int] = _opt([60_000, 80_000], "steps at which the learning rate is multiplied by --lr-factor",
                               "optimisation", nargs="*")
    lr_factor: float = _opt(0.5, "learning-rate factor applied at each of --lr-steps", "optimisation")
    amp: bool = _opt(False, "bf16 autocast for the networks (warping stays fp32)", "optimisation")
    channels_last: bool = _opt(False, "channels-last-3d memory format", "optimisation")
    checkpointing: bool = _opt(False, "gradient checkpointing per cascade (memory of about one cascade)", "optimisation")
    seed: int = _opt(0, "random seed (initialisation, pair sampling, augmentation)", "optimisation")
    device: str = _opt("auto", "auto (CUDA if available, else CPU), cpu, cuda or cuda:N", "optimisation")
    threads: int = _opt(0, "CPU threads per process (0 = torch's default)", "optimisation")
    # output
    output: str = _opt("runs/train", "output folder: last.pt, best.pt, the fp16 export, logs, TensorBoard", "output")
    save_every: int = _opt(1000, "write OUTPUT/last.pt every N steps (and at the end)", "output")
    snapshot_every: int = _opt(0, "also keep the weights every N steps as OUTPUT/snapshots/step_N.pt (fp32, no training "
                                  "state) for Training/average_checkpoints.py; 0 = off", "output")
    val_every: int = _opt(1000, "score the validation set every N steps (and at the end)", "output")
    log_every: int = _opt(50, "log the loss terms every N steps", "output")
    image_every: int = _opt(1000, "write image slices to TensorBoard every N steps", "output")
    tensorboard: bool = _opt(True, "TensorBoard logging (needs the tensorboard package)", "output")
    progress: bool = _opt(True, "tqdm progress bar", "output")
    export: Optional[str] = _opt(None, "compact fp16 inference file for `rcreg register --model` (default: "
                                       "OUTPUT/model_fp16.pt)", "output")
    init: Optional[str] = _opt(None, "start from the weights of this checkpoint (same architecture; a fresh optimiser, "
                                     "schedule and step count): fine-tuning", "output")
    resume: bool = _opt(False, "continue from OUTPUT/last.pt exactly (weights, optimiser, schedule, RNG, step)", "output")

    def to_dict(self) -> dict:
        return asdict(self)

    def model_kwargs(self) -> dict:
        """Keyword arguments of :class:`~rcreg.cascade.RecursiveCascadeNetwork` for this configuration."""
        return dict(base=self.base, n_cascades=self.cascades, affine=self.affine, width=self.width,
                    level_widths=self.level_widths, affine_levels=self.affine_levels,
                    affine_translation=self.affine_translation, diffeomorphic=self.diffeomorphic,
                    checkpointing=self.checkpointing, amp=self.amp, channels_last=self.channels_last)

    def loss_kwargs(self) -> dict:
        """Keyword arguments of :class:`~rcreg.losses.RegistrationLoss` for this configuration."""
        return dict(similarity=self.similarity, reg_weight=self.reg_weight, det_weight=self.det_weight,
                    ortho_weight=self.ortho_weight, dice_weight=self.dice_weight,
                    affine_similarity_weight=self.affine_similarity, ncc_window=self.ncc_window,
                    field_weight=self.field_weight)

    def augmentation_kwargs(self) -> dict:
        """Keyword arguments of :class:`~rcreg.training.augmentation.AugmentationSettings` (same names)."""
        from .augmentation import AugmentationSettings

        return {f.name: getattr(self, f.name) for f in fields(AugmentationSettings)}

    def check(self) -> "TrainConfig":
        """Raise :class:`ConfigError` for values of the wrong type or out of range (before any work starts);
        ints given for float options become floats."""
        for name in _FIELDS:
            setattr(self, name, _typed(name, getattr(self, name)))
        for name in ("iterations", "batch_size", "save_every", "val_every", "log_every", "image_every", "val_pairs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.snapshot_every < 0:
            raise ConfigError(f"snapshot_every must be ≥ 0 (0 = no snapshots), got {self.snapshot_every}")
        if self.cascades < 0 or (self.cascades == 0 and not self.affine):
            raise ConfigError(f"need at least one cascade, got cascades={self.cascades}, affine={self.affine}")
        if len(self.grid) != 3 or min(self.grid) < 8:
            raise ConfigError(f"grid must be three sizes ≥ 8, got {self.grid}")
        if self.lr <= 0 or self.width <= 0:
            raise ConfigError("lr and width must be > 0")
        if self.level_widths is not None and (len(self.level_widths) != 6 or min(self.level_widths) <= 0
                                              or self.base != "vtn"):
            raise ConfigError(f"level_widths must be six factors > 0 for the vtn base network, got {self.level_widths}")
        try:
            check_ncc_window(self.ncc_window)
        except ValueError as exc:
            raise ConfigError(f"ncc_window: {exc}") from None
        if not 0.0 <= self.contrast <= 1.0:
            raise ConfigError(f"contrast must be a share in [0, 1], got {self.contrast}")
        for name in ("identity_pairs", "synthetic_pairs"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be a share in [0, 1], got {getattr(self, name)}")
        if self.field_weight > 0 and self.synthetic_pairs == 0 and self.identity_pairs == 0 and self.teacher is None:
            raise ConfigError("field_weight needs pairs whose field is known: set synthetic_pairs or identity_pairs > 0, "
                              "or a teacher")
        if self.teacher is not None and self.field_weight <= 0:
            raise ConfigError("teacher needs field_weight > 0 (the teacher's flow is the field loss's target)")
        if not 1 <= self.teacher_repeat <= MAX_REPEAT:
            raise ConfigError(f"teacher_repeat must be 1…{MAX_REPEAT}, got {self.teacher_repeat}")
        if self.train is None:
            raise ConfigError("no training data: set `train` in the config or pass --train PATH")
        if self.mode == "atlas" and self.atlas is None:
            raise ConfigError("mode atlas needs an atlas image (--atlas PATH)")
        from ..networks import available_networks

        if self.base not in available_networks():
            raise ConfigError(f"base must be one of {', '.join(available_networks())}, got {self.base!r}")
        return self


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_HINTS = get_type_hints(TrainConfig)
_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
_LISTS = {int: "integers", float: "numbers", str: "strings"}


def _option_type(name: str) -> tuple[Any, bool]:
    """The type of option ``name`` without ``Optional`` (a class, ``list[...]`` or ``Literal[...]``) and
    whether it may be None."""
    hint = _HINTS[name]
    if get_origin(hint) is Union:
        return next(a for a in get_args(hint) if a is not type(None)), True
    return hint, False


def choices(name: str) -> Optional[tuple[str, ...]]:
    """The allowed values of an option typed ``Literal[...]``, else None."""
    hint, _ = _option_type(name)
    return get_args(hint) if get_origin(hint) is Literal else None


def _scalar(kind: type, value: Any) -> Any:
    """``value`` as a ``kind`` (an int is a valid float, a bool is no number); raises TypeError otherwise."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise TypeError
    return value


def _typed(name: str, value: Any) -> Any:
    """``value`` checked against the type of option ``name``; a one-line :class:`ConfigError` names the key."""
    hint, optional = _option_type(name)
    if value is None and optional:
        return None
    allowed = choices(name)
    if allowed is not None:
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return value
    if get_origin(hint) is list:
        kind = get_args(hint)[0]
        try:
            if not isinstance(value, list):
                raise TypeError
            return [_scalar(kind, v) for v in value]
        except TypeError:
            raise ConfigError(f"{name} must be a list of {_LISTS[kind]}, got {value!r}") from None
    try:
        return _scalar(hint, value)
    except TypeError:
        raise ConfigError(f"{name} must be {_KINDS[hint]}{' or null' if optional else ''}, got {value!r}") from None


def load_config(path: str | Path) -> dict:
    """Read a YAML config file into a dict of known keys; relative data paths are made relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}")
    try:
        data = {key: _typed(key, value) for key, value in data.items()}
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for key in ("train", "val", "atlas", "atlas_labels", "cache", "init", "teacher"):
        value = data.get(key)
        if isinstance(value, str):
            parts = value.split(";") if key == "train" else [value]
            data[key] = ";".join(_relative_to(path, part.strip(), key) for part in parts)
    return data


def _relative_to(config: Path, value: str, key: str) -> str:
    """``value`` of option ``key`` with a relative path made relative to the config file ``config``'s folder
    (sample data, other schemes and installed model names unchanged)."""
    if ":" in value[:8] or Path(value).expanduser().is_absolute():
        return value
    if key in ("init", "teacher") and not (config.parent / value).is_file():  # or name an installed model
        return value
    return str(config.parent / value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per option (flags default to 'unset' so the file's values stay)."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (flags override it)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        meta = f.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        default = f.default if f.default is not MISSING else f.default_factory()
        help_text = f"{meta['help']} (default: {json.dumps(default)})"
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = dict(dest=f.name, default=None, help=help_text)
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        hint, _ = _option_type(f.name)
        if choices(f.name) is not None:
            kwargs["choices"] = choices(f.name)
        if "nargs" in meta:
            kwargs["nargs"] = meta["nargs"]
        kind = meta.get("type") or (get_args(hint)[0] if get_origin(hint) is list else
                                    str if get_origin(hint) is Literal else hint)
        group.add_argument(flag, type=kind, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults ← config file ← flags into a checked :class:`TrainConfig`."""
    values = load_config(args.config) if getattr(args, "config", None) else {}
    values.update({name: getattr(args, name) for name in _FIELDS if getattr(args, name, None) is not None})
    return TrainConfig(**values).check()
