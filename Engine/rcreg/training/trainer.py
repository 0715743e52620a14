"""The training loop: unsupervised end-to-end training of a recursive cascade on image lists.

``train(config)`` runs in one process, or in each process started by ``torchrun`` (DistributedData-
Parallel; only rank 0 writes). Every step draws its pairs and augmentation from a generator seeded by
(seed, rank, step), so a resumed run repeats exactly what an uninterrupted one would have done.

Output folder: ``last.pt`` (training checkpoint: weights, model card, optimiser, schedule, RNG, step),
``best.pt`` (best validation score), the fp16 inference export, ``train_log.csv``, ``val_log.csv``,
``tensorboard/`` and ``cache/`` (preprocessed volumes).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..cascade import RecursiveCascadeNetwork
from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..io import InputError, remove_stale_temporaries
from ..losses import RegistrationLoss
from ..models import resolve_model
from ..spatial import warp
from . import distributed
from .augmentation import (AugmentationSettings, augment_intensity, augment_spatial, deform, random_contrast,
                           random_spatial_flow)
from .config import ConfigError, TrainConfig
from .datasets import ImageEntry, TrainingPairs, Volume, VolumeCache, read_image_list, read_pair_list
from .evaluation import UNREGISTERED, mean_std, score_pair
from .logbook import TrainingLog
from .state import capture_rng, export_inference, learning_rate, restore_rng, step_generator

__all__ = ["TrainResult", "DataSources", "resolve_sources", "model_card", "make_optimizer", "train", "report"]


@dataclass
class DataSources:
    """The checked file lists of a run (resolved before any work starts)."""

    train: list  # ImageEntry (pairwise, atlas) or PairEntry (paired)
    val: list = field(default_factory=list)  # ImageEntry or PairEntry
    atlas: Optional[ImageEntry] = None
    groups: list = field(default_factory=list)  # index of the ';'-separated list each training entry came from


@dataclass
class TrainResult:
    """What a run produced (paths are None on non-main ranks)."""

    model: RecursiveCascadeNetwork
    step: int
    last: Optional[Path] = None
    best: Optional[Path] = None
    export: Optional[Path] = None
    validation: dict = field(default_factory=dict)


def resolve_sources(config: TrainConfig) -> DataSources:
    """Read and check every data list of ``config``: one-line errors for missing files, nothing else done."""
    pairs = config.mode == "paired"
    train, groups = [], []
    for group, part in enumerate(p.strip() for p in config.train.split(";") if p.strip()):
        entries = read_pair_list(part) if pairs else read_image_list(part)
        if config.mode == "pairwise" and len(entries) < 2:
            raise InputError(f"mode pairwise needs at least 2 training images in each list, {part} gives {len(entries)}")
        train += entries
        groups += [group] * len(entries)
    val = []
    if config.val:
        val = read_pair_list(config.val) if pairs else read_image_list(config.val)
    atlas = None
    if config.mode == "atlas":
        entries = read_image_list(config.atlas)
        if len(entries) != 1:
            raise InputError(f"atlas must be one image, got {len(entries)} from {config.atlas}")
        labels = read_image_list(config.atlas_labels)[0].image if config.atlas_labels else entries[0].labels
        atlas = ImageEntry(entries[0].image, labels, entries[0].landmarks)
    if config.mode == "pairwise" and config.val and len(val) < 2:
        raise InputError(f"pairwise validation needs at least 2 images, {config.val} gives {len(val)}")
    if config.dice_weight > 0:
        images = [e for p in train for e in (p.fixed, p.moving)] if pairs else [*train, *([atlas] if atlas else [])]
        missing = [e.name for e in images if e.labels is None]
        if missing:
            raise InputError(f"{config.train}: Dice supervision needs label maps; missing for {', '.join(missing[:3])}")
    return DataSources(train, val, atlas, groups)


def model_card(config: TrainConfig, step: int, n_train: int, validation: Optional[dict] = None,
               init: Optional[dict] = None) -> dict:
    """The model card stored in every checkpoint (see docs/model-card.md).

    ``init`` is the provenance of the starting weights when fine-tuning (``{"source", "training"}``).
    """
    return {
        "name": config.name,
        "description": config.description,
        "modality": config.modality,
        "region": config.region,
        "grid": {"shape": list(config.grid), "region": config.grid_region},
        "normalization": dict(config.normalization),
        "cascades": config.cascades,
        "base": config.base,
        "width": config.width,
        **({"level_widths": list(config.level_widths)} if config.level_widths else {}),
        "affine": config.affine,
        "training": {"iterations": step,
                     "data": {"train": config.train, "val": config.val, "mode": config.mode,
                              "atlas": config.atlas, "images": n_train},
                     "config": config.to_dict(),
                     **({"init": init} if init else {})},
        "validation": dict(validation or {}),
    }


def _load_data(config: TrainConfig, sources: DataSources, cache: VolumeCache):
    """Preprocess (or read from the cache) the training pairs and the validation pairs."""
    if config.mode == "paired":
        volumes, pairs = [], []
        for pair in sources.train:
            fixed = cache.load(pair.fixed)
            volumes += [fixed, cache.load(pair.moving, fixed.grid)]
            pairs.append((len(volumes) - 2, len(volumes) - 1))
        val = [(f, cache.load(p.moving, f.grid)) for p in sources.val[: config.val_pairs] for f in [cache.load(p.fixed)]]
    elif config.mode == "atlas":
        atlas = cache.load(sources.atlas)
        volumes = [atlas] + [cache.load(e, atlas.grid) for e in sources.train]
        pairs = [(0, i) for i in range(1, len(volumes))]
        val = [(atlas, cache.load(e, atlas.grid)) for e in sources.val[: config.val_pairs]]
    else:
        volumes = [cache.load(e) for e in sources.train]
        pairs = TrainingPairs.pairwise(sources.groups or [0] * len(volumes))
        val = []
        for a, b in list(zip(sources.val, sources.val[1:]))[: config.val_pairs]:  # consecutive images
            fixed = cache.load(a)
            val.append((fixed, cache.load(b, fixed.grid)))
    return TrainingPairs(volumes, pairs, with_labels=config.dice_weight > 0), val


def make_optimizer(parameters, lr: float) -> torch.optim.Adam:
    """Adam with the fused single-kernel update where this torch supports it (CPU and CUDA since 2.4):
    about 3× less time per step than the per-parameter loop for a 100 M-parameter cascade on a CPU."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(parameters, lr=lr)


def _one_hot(labels: torch.Tensor, values: list[int]) -> torch.Tensor:
    """``(B, 1, X, Y, Z)`` integer labels → ``(B, L, X, Y, Z)`` float indicator of each value (no background)."""
    return torch.cat([(labels == v).float() for v in values], dim=1)


def _validate(model: RecursiveCascadeNetwork, pairs: list[tuple[Volume, Volume]], device) -> dict:
    """Mean scores over the validation pairs; ``score`` is Dice when labels exist, else correlation, and
    ``unregistered_score`` the same for the pairs left unregistered."""
    was_training = model.training
    model.eval()
    rows = [score_pair(model, f, m, device=device, surface_distance=False) for f, m in pairs]
    model.train(was_training)
    keys = ["dice", "correlation", "folding_fraction", "sdlogj", "landmark_error", *(f"unregistered_{k}" for k in UNREGISTERED)]
    means = {k: v[0] for k, v in mean_std(rows, keys).items()}
    metric = "dice" if not math.isnan(means["dice"]) else "correlation"
    means["score"], means["unregistered_score"], means["metric"] = means[metric], means[f"unregistered_{metric}"], metric
    return means


def _chosen(images: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """Which pairs of a batch ``(B, ...)`` an option applies to: ``(B,)`` bool, each with probability ``share``."""
    return (torch.rand(images.shape[0], generator=generator) < share).to(images.device)


def _identity_pairs(fixed: torch.Tensor, moving: torch.Tensor, fixed_labels: Optional[torch.Tensor],
                    moving_labels: Optional[torch.Tensor], share: float, generator: torch.Generator):
    """Replace each pair's moving image ``(B, 1, X, Y, Z)`` (and labels) by its fixed one with probability ``share``.

    Such pairs need no deformation: they teach the network to leave aligned images alone, which is what a
    later cascade, and every shared-weight repeat at test time, sees. Returns the moving images, their
    labels and which pairs were replaced ``(B,)`` (bool).
    """
    same = _chosen(fixed, share, generator)
    where = same.view(-1, 1, 1, 1, 1)
    moving = torch.where(where, fixed, moving)
    if moving_labels is not None and fixed_labels is not None:
        moving_labels = torch.where(where, fixed_labels, moving_labels)
    return moving, moving_labels, same


#: Normalised intensity above which a voxel is image content, not background (images are in [0, 1]).
FOREGROUND_LEVEL = 0.05


def _foreground(images: torch.Tensor, margin: int = 2) -> torch.Tensor:
    """``(B, 1, X, Y, Z)`` float mask of the voxels within ``margin`` voxels of image content: where a
    pair's images say something about the field between them."""
    content = (images > FOREGROUND_LEVEL).float()
    return torch.nn.functional.max_pool3d(content, 2 * margin + 1, stride=1, padding=margin)


def _synthetic_pairs(fixed: torch.Tensor, fixed_labels: Optional[torch.Tensor], deformed: torch.Tensor,
                     deformed_labels: Optional[torch.Tensor], source: torch.Tensor,
                     source_labels: Optional[torch.Tensor], share: float, generator: torch.Generator):
    """With probability ``share`` per pair, make it *synthetic*: fixed = ``deformed`` (the moving image after
    its spatial augmentation), moving = ``source`` (the same image before it), whose true pull-back field is
    that augmentation's flow. Images ``(B, 1, X, Y, Z)``; returns (fixed, fixed labels, moving, moving
    labels, which pairs were made synthetic ``(B,)`` bool)."""
    chosen = _chosen(fixed, share, generator)
    where = chosen.view(-1, 1, 1, 1, 1)

    def pick(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if a is None or b is None else torch.where(where, a, b)

    return (torch.where(where, deformed, fixed), pick(deformed_labels, fixed_labels),
            torch.where(where, source, deformed), pick(source_labels, deformed_labels), chosen)


class _Run:
    """State of one training run in one process."""

    def __init__(self, config: TrainConfig, sources: DataSources, ctx: distributed.Context):
        self.config, self.sources, self.ctx = config, sources, ctx
        self.output = Path(config.output)
        self.last_path = self.output / "last.pt"
        self.best_path = self.output / "best.pt"
        self.export_path = Path(config.export) if config.export else self.output / "model_fp16.pt"
        if not config.resume and self.last_path.exists():  # every rank checks, so all stop together
            raise ConfigError(f"{self.last_path} exists: pass --resume to continue it, or choose another --output")
        if config.resume and not self.last_path.is_file():
            raise ConfigError(f"cannot resume: {self.last_path} not found")
        if ctx.is_main and self.output.is_dir():
            remove_stale_temporaries(self.output)  # half-written checkpoints of a killed run
        init = resolve_model(config.init) if config.init and not config.resume else None  # fail before any work
        self.teacher = resolve_model(config.teacher) if config.teacher else None
        self.init_provenance = {"source": config.init, "training": init.card.get("training")} if init else None
        threads = config.threads or (max(1, (torch.get_num_threads() // ctx.local_world_size)) if ctx.distributed else 0)
        if threads:
            torch.set_num_threads(threads)

        torch.manual_seed(config.seed)  # the model and its checks first: config errors before preprocessing
        self.model = RecursiveCascadeNetwork(**config.model_kwargs()).to(ctx.device)
        self.optimizer = make_optimizer(self.model.parameters(), config.lr)
        self.loss = RegistrationLoss(**config.loss_kwargs())
        self.augment = AugmentationSettings(**config.augmentation_kwargs())
        self.step = 0
        self.best = {"score": -math.inf, "step": None, "metric": None}
        if config.resume:
            self._restore()
        elif init is not None:
            self._initialise(init.network, config.init)

        cache_folder = Path(config.cache) if config.cache else self.output / "cache"
        if ctx.is_main and cache_folder.is_dir():
            remove_stale_temporaries(cache_folder)  # files of killed runs only: the cache may be shared
        cache = VolumeCache(cache_folder, model_card(config, 0, 0))
        if ctx.is_main:  # rank 0 preprocesses; the others then read the cache
            self.data, self.val = _load_data(config, sources, cache)
        distributed.barrier(ctx)
        if not ctx.is_main:
            self.data, self.val = _load_data(config, sources, cache)
        self.label_values = self.data.label_values() if config.dice_weight > 0 else []
        self.net = (DistributedDataParallel(self.model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
                    if ctx.distributed else self.model)
        self.log = TrainingLog(self.output, config.tensorboard, self.step if config.resume else None) if ctx.is_main else None

    # -- checkpoints -------------------------------------------------------------------------------
    def _card(self, validation: Optional[dict] = None) -> dict:
        return model_card(self.config, self.step, len(self.data.volumes), validation, self.init_provenance)

    def _restore(self) -> None:
        ckpt = load_checkpoint(self.last_path)
        state = ckpt.get("training")
        if state is None:
            raise CheckpointError(f"{self.last_path} holds no training state (an inference file cannot be resumed)")
        if RecursiveCascadeNetwork.architecture(ckpt["model"]) != self.model.config:
            raise CheckpointError(f"{self.last_path} is a {ckpt['model']} model but the config asks for {self.model.config}")
        self.model.load_state_dict(ckpt["state_dict"])
        self.init_provenance = ckpt.get("card", {}).get("training", {}).get("init")  # a fine-tuned run stays one
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.best = dict(state["best"])
        restore_rng(state["rng"])

    def _initialise(self, source: Optional[RecursiveCascadeNetwork], spec: str) -> None:
        """Fine-tuning: copy the weights of a checkpoint file or installed model of the same architecture.

        Only the affine network's shape (``affine_levels``, ``affine_translation``) may differ: its weights
        that fit are copied and the rest (its head) start afresh; the card's ``training.init.fresh`` lists
        them. With another translation unit the head always starts afresh (its outputs would mean another thing).
        ``diffeomorphic`` may differ too: a small displacement field is close to its velocity field.
        """
        def body(config: dict) -> dict:
            return dict(config, affine_levels=None, affine_translation=None, diffeomorphic=None)

        if source is None or body(source.config) != body(self.model.config):
            found = source.config if source is not None else "not a recursive cascade network"
            raise CheckpointError(f"init {spec}: it is {found} but the config asks for {self.model.config}")
        target, weights = self.model.state_dict(), source.state_dict()
        new_unit = source.config["affine_translation"] != self.model.config["affine_translation"]
        fresh = sorted(k for k in target if k not in weights or weights[k].shape != target[k].shape
                       or (new_unit and k.startswith("affine.head.")))
        self.model.load_state_dict({k: weights[k] if k not in fresh else v for k, v in target.items()})
        if fresh:
            self.init_provenance["fresh"] = fresh
            if self.ctx.is_main:
                print(f"init {spec}: {len(fresh)} tensor(s) of another shape start afresh: {', '.join(fresh)}",
                      file=sys.stderr)

    def _save(self) -> None:
        training = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                    "schedule": {"lr": self.config.lr, "lr_steps": list(self.config.lr_steps),
                                 "lr_factor": self.config.lr_factor},
                    "rng": capture_rng(), "best": dict(self.best)}
        save_checkpoint(self.last_path, self.model, self._card(self._best_card()), training=training)

    def _best_card(self) -> dict:
        if self.best["step"] is None:
            return {}
        return {"metric": self.best["metric"], "value": self.best["score"], "step": self.best["step"], "pairs": len(self.val)}

    # -- one step ----------------------------------------------------------------------------------
    def _train_step(self) -> tuple[dict, tuple]:
        config, device = self.config, self.ctx.device
        gen = step_generator(config.seed, self.ctx.rank, self.step)
        batch = self.data.sample(config.batch_size, gen).to(device)
        moving_flow = random_spatial_flow(batch.moving.shape[2:], self.augment, gen, batch=batch.moving.shape[0],
                                          device=device)
        moving, moving_labels = (deform(batch.moving, batch.moving_labels, moving_flow) if self.augment.spatial
                                 else (batch.moving, batch.moving_labels))
        fixed, fixed_labels = batch.fixed, batch.fixed_labels
        if config.augment_fixed:
            fixed, fixed_labels = augment_spatial(fixed, fixed_labels, self.augment, gen)
        known = torch.zeros(moving.shape[0], dtype=torch.bool, device=device)  # pairs whose true field is known
        known_flow = moving_flow  # the true field of the synthetic pairs; 0 for identity pairs
        if config.synthetic_pairs > 0:
            fixed, fixed_labels, moving, moving_labels, known = _synthetic_pairs(
                fixed, fixed_labels, moving, moving_labels, batch.moving, batch.moving_labels,
                config.synthetic_pairs, gen)
        if config.identity_pairs > 0:
            moving, moving_labels, same = _identity_pairs(fixed, moving, fixed_labels, moving_labels,
                                                          config.identity_pairs, gen)
            known, known_flow = known | same, torch.where(same.view(-1, 1, 1, 1, 1), 0.0, known_flow)
        content = _foreground(fixed) if config.field_weight > 0 else None  # where the field loss counts
        if self.augment.contrast > 0:
            fixed, moving = random_contrast(fixed, moving, self.augment.contrast, gen)
        fixed = augment_intensity(fixed, self.augment, gen)
        moving = augment_intensity(moving, self.augment, gen)
        if self.teacher is not None:  # the teacher sees what the network sees
            known_flow = torch.where(known.view(-1, 1, 1, 1, 1), known_flow, self._teacher_flows(fixed, moving, ~known))
            known = torch.ones_like(known)
        known_weights = known.view(-1, 1, 1, 1, 1) * content if content is not None else None
        lr = learning_rate(self.step, config.lr, config.lr_steps, config.lr_factor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        out = self.net(fixed, moving)
        if not torch.isfinite(out.flow).all():
            raise RuntimeError(f"non-finite flow at step {self.step + 1} (diverged, or a reduced-precision kernel "
                               f"failed: try a lower --lr or no --amp/--channels-last); resume from {self.last_path}")
        warped_onehot = fixed_onehot = None
        if config.dice_weight > 0:
            warped_onehot = warp(_one_hot(moving_labels, self.label_values), out.flow)
            fixed_onehot = _one_hot(fixed_labels, self.label_values)
        total, terms = self.loss(out, fixed, warped_onehot, fixed_onehot, moving, known_flow, known_weights)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.step += 1
        terms["lr"] = lr
        return terms, (fixed[0, 0], moving[0, 0], out.warped[0, 0].detach())

    def _teacher_flows(self, fixed: torch.Tensor, moving: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """The teacher's test-time-averaged flows ``(B, 3, X, Y, Z)`` (voxels) for the pairs ``which`` ``(B,)``
        (bool) of the images ``(B, 1, X, Y, Z)``; zero for the others."""
        config = self.config
        flows = torch.zeros(fixed.shape[0], 3, *fixed.shape[2:], device=fixed.device)
        for i in which.nonzero().flatten().tolist():
            flows[i] = self.teacher.predict(fixed[i:i + 1], moving[i:i + 1], repeat=config.teacher_repeat,
                                            device=fixed.device, symmetric=config.teacher_symmetric,
                                            flip_average=config.teacher_flip_average)[0].to(fixed.device)
        return flows

    def _validate(self) -> None:
        scores = _validate(self.model, self.val, self.ctx.device)
        self.log.scalars("val", self.step, {k: v for k, v in scores.items() if k != "metric"})
        if scores["score"] < scores["unregistered_score"]:
            tqdm.write(f"warning: step {self.step}: validation {scores['metric']} {scores['score']:.4f} is worse than "
                       f"without registration ({scores['unregistered_score']:.4f})", file=sys.stderr)
        if scores["score"] > self.best["score"]:
            self.best = {"score": scores["score"], "step": self.step, "metric": scores["metric"]}
            save_checkpoint(self.best_path, self.model, self._card(self._best_card()))

    def run(self) -> TrainResult:
        config, main = self.config, self.ctx.is_main
        bar = tqdm(total=config.iterations, initial=self.step, disable=not (main and config.progress),
                   desc="training", unit="it", dynamic_ncols=True)
        self.model.train()
        while self.step < config.iterations:
            terms, slices = self._train_step()
            bar.update(1)
            if not main:
                continue
            final = self.step == config.iterations
            if self.step % config.log_every == 0 or final:
                self.log.scalars("train", self.step, terms)
                bar.set_postfix(loss=f"{terms['total']:.4f}")
            if self.step % config.image_every == 0 or final:
                self.log.images(self.step, fixed=slices[0], moving=slices[1], warped=slices[2])
            if self.val and (self.step % config.val_every == 0 or final):
                self._validate()
            if self.step % config.save_every == 0 or final:
                self._save()
            if config.snapshot_every and self.step % config.snapshot_every == 0:
                save_checkpoint(self.output / "snapshots" / f"step_{self.step}.pt", self.model, self._card())
        bar.close()
        result = TrainResult(self.model, self.step)
        if main:
            source = self.best_path if self.best_path.is_file() else self.last_path
            result = TrainResult(self.model, self.step, self.last_path,
                                 self.best_path if self.best_path.is_file() else None,
                                 export_inference(source, self.export_path), self._best_card())
            self.log.close()
        distributed.barrier(self.ctx)
        return result


def train(config: TrainConfig) -> TrainResult:
    """Train a recursive cascade as ``config`` says; in a ``torchrun`` process, as one rank of DDP.

    Args:
        config: every option (docs/training.md); checked first.

    Returns:
        A :class:`TrainResult`: the model and the paths of ``last.pt``, ``best.pt`` and the fp16 export.

    Raises:
        rcreg.training.config.ConfigError: an option of the wrong type or out of range, or an existing
            ``last.pt`` without ``resume``.
        rcreg.io.InputError: a missing or unreadable training file (checked before any work).
        rcreg.checkpoint.CheckpointError: an ``init``/``resume`` checkpoint that does not fit the config.
        RuntimeError: training diverged (non-finite flow).
    """
    config.check()
    sources = resolve_sources(config)
    ctx = distributed.setup(config.device)
    try:
        return _Run(config, sources, ctx).run()
    finally:
        distributed.shutdown(ctx)


def report(result: TrainResult, stream=sys.stdout) -> None:
    """Print where the run's files went."""
    print(f"trained {result.step} steps", file=stream)
    print(f"training checkpoint: {result.last}", file=stream)
    if result.best is not None:
        print(f"best checkpoint:     {result.best} ({result.validation.get('metric')} "
              f"{result.validation.get('value'):.4f} at step {result.validation.get('step')})", file=stream)
    print(f"inference model:     {result.export}  (rcreg register --model {result.export})", file=stream)
