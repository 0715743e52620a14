"""Training configuration: one flat table of options shared by YAML files and command-line flags.

A YAML file sets any of the keys below (``python Training/train.py --config FILE.yaml``); each key is
also a flag (``--cascades 5``) that overrides the file. Unknown keys are errors naming the file.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

__all__ = ["TrainConfig", "ConfigError", "load_config", "add_arguments", "config_from_args"]


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
                                      "moving_labels])", "data")
    val: Optional[str] = _opt(None, "validation images or pairs in the same formats, with label maps; scored every "
                                    "--val-every steps (Dice picks the best checkpoint)", "data")
    mode: str = _opt("pairwise", "pairwise: random pairs of training images; atlas: every image to the fixed --atlas "
                                 "(the paper's brain set-up); paired: the explicit pairs of a pair list", "data",
                     choices=("pairwise", "atlas", "paired"))
    atlas: Optional[str] = _opt(None, "fixed atlas image for mode atlas", "data")
    atlas_labels: Optional[str] = _opt(None, "label map of the atlas (for validation Dice / Dice supervision)", "data")
    val_pairs: int = _opt(16, "most validation pairs scored (pairwise: consecutive images of the list)", "data")
    cache: Optional[str] = _opt(None, "folder for preprocessed volumes (default: OUTPUT/cache); reused across runs", "data")
    # model card
    name: str = _opt("custom", "model name written into the model card", "model card")
    description: str = _opt("", "one-line description for the model card", "model card")
    modality: str = _opt("unknown", "image modality for the model card (e.g. MR, CT)", "model card")
    grid: list = _opt([128, 128, 128], "network grid size X Y Z (voxels; isotropic spacing covering the fixed image)",
                      "model card", nargs=3, type=int)
    normalization: dict = _opt({"type": "percentile", "low": 1, "high": 99},
                               "intensity normalisation as JSON, e.g. '{\"type\": \"window\", \"min\": -1000, \"max\": 400}'",
                               "model card", type=json.loads)
    # model
    base: str = _opt("vtn", "deformable base network (vtn, voxelmorph)", "model")
    cascades: int = _opt(3, "number of deformable cascades n", "model")
    width: float = _opt(1.0, "channel width factor of every network (1 = the paper's VTN)", "model")
    affine: bool = _opt(True, "start with the affine cascade", "model")
    affine_levels: int = _opt(6, "encoder levels of the affine network, whose head reads the last one pooled to 2³ "
                                 "(6: the paper's, a 2³ map at a 128³ grid; use 5 for a 64³ grid)", "model")
    affine_translation: str = _opt("voxels", "unit of the affine head's translation output: voxels (the paper's; "
                                            "learns about lr voxels per step) or extent (half the grid extent)",
                                   "model", choices=("voxels", "extent"))
    # loss
    similarity: str = _opt("pearson", "similarity: pearson (the paper's global correlation), ncc (local) or mse", "loss",
                           choices=("pearson", "ncc", "mse"))
    reg_weight: float = _opt(1.0, "weight of the smoothness of every cascade's flow", "loss")
    det_weight: float = _opt(0.1, "weight of the affine determinant loss", "loss")
    ortho_weight: float = _opt(0.1, "weight of the affine orthogonality loss", "loss")
    affine_similarity: float = _opt(0.0, "weight of the similarity of the moving image warped by the affine cascade "
                                         "alone (not in the paper: gives the affine cascade its own objective)", "loss")
    dice_weight: float = _opt(0.0, "weight of a soft Dice loss on warped label maps (needs training labels)", "loss")
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
    gamma: float = _opt(0.3, "random gamma exp(U(−g, g)) on both images", "augmentation")
    bias_field: float = _opt(0.3, "random smooth multiplicative bias field exp(±b) on both images", "augmentation")
    noise: float = _opt(0.02, "Gaussian noise with standard deviation up to this (intensities in [0, 1])", "augmentation")
    # optimisation
    iterations: int = _opt(100_000, "training steps", "optimisation")
    batch_size: int = _opt(4, "pairs per step and process", "optimisation")
    lr: float = _opt(1e-4, "Adam learning rate", "optimisation")
    lr_steps: list = _opt([60_000, 80_000], "steps at which the learning rate is multiplied by --lr-factor",
                          "optimisation", nargs="*", type=int)
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

    def check(self) -> "TrainConfig":
        """Raise :class:`ConfigError` for values out of range (before any work starts)."""
        for name in ("iterations", "batch_size", "save_every", "val_every", "log_every", "image_every", "val_pairs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.cascades < 0 or (self.cascades == 0 and not self.affine):
            raise ConfigError(f"need at least one cascade, got cascades={self.cascades}, affine={self.affine}")
        if len(self.grid) != 3 or min(self.grid) < 8:
            raise ConfigError(f"grid must be three sizes ≥ 8, got {self.grid}")
        if self.lr <= 0 or self.width <= 0:
            raise ConfigError("lr and width must be > 0")
        if not 0.0 <= self.identity_pairs <= 1.0:
            raise ConfigError(f"identity_pairs must be a share in [0, 1], got {self.identity_pairs}")
        if self.train is None:
            raise ConfigError("no training data: set `train` in the config or pass --train PATH")
        if self.mode == "atlas" and self.atlas is None:
            raise ConfigError("mode atlas needs an atlas image (--atlas PATH)")
        for name in ("mode", "similarity", "affine_translation"):
            choices = TrainConfig.__dataclass_fields__[name].metadata["choices"]
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        return self


_FIELDS = {f.name: f for f in fields(TrainConfig)}


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
    for key in ("train", "val", "atlas", "atlas_labels", "cache", "init"):
        value = data.get(key)
        if isinstance(value, str) and ":" not in value[:8] and not Path(value).expanduser().is_absolute():
            if key != "init" or (path.parent / value).is_file():  # init may also name an installed model
                data[key] = str(path.parent / value)
    return data


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
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        if "nargs" in meta:
            kwargs["nargs"] = meta["nargs"]
        kind = meta.get("type") or (type(default) if default is not None else str)
        group.add_argument(flag, type=kind, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults ← config file ← flags into a checked :class:`TrainConfig`."""
    values = load_config(args.config) if getattr(args, "config", None) else {}
    values.update({name: getattr(args, name) for name in _FIELDS if getattr(args, name, None) is not None})
    try:
        config = TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    for name, f in _FIELDS.items():  # YAML gives ints for floats; coerce simple scalars
        value = getattr(config, name)
        default = f.default if f.default is not MISSING else None
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            setattr(config, name, float(value))
    return config.check()
