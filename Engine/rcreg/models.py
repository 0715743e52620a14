"""Finding the registration model to run: bundled models, checkpoint files, networks or plain predictors.

Bundled models are rcreg checkpoints (rcreg.checkpoint) installed as ``rcreg/models/<name>.pt``;
their model card (docs/model-card.md) says the grid, the normalisation and the modality. Anything
that maps network-grid tensors to a flow can drive the pipeline: a callable
``f(fixed, moving) -> flow`` with ``fixed``, ``moving`` ``(1, 1, X, Y, Z)`` and ``flow``
``(1, 3, X, Y, Z)`` in voxels of the network grid (docs/conventions.md). A network or predictor
without a card gets :data:`DEFAULT_CARD`.
"""
from __future__ import annotations

import copy
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from .cascade import RecursiveCascadeNetwork
from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from .options import MAX_REPEAT, NO_MODEL
from .spatial import invert_flow, mirror, mirror_flow

__all__ = [
    "MODELS_DIR",
    "MAX_REPEAT",
    "DEFAULT_CARD",
    "Model",
    "ModelSpec",
    "list_models",
    "default_model",
    "resolve_model",
    "select_device",
    "native_bf16",
    "training_steps",
]

MODELS_DIR = Path(__file__).resolve().parent / "models"

#: The views :meth:`Model.predict` averages with ``flip_average``: the pair as it is and mirrored along each grid axis.
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (2,))

#: Card given to networks and predictors that come without one: a 128³ grid and 1–99 % percentile
#: scaling, which suits MR and is harmless for CT.
DEFAULT_CARD: dict = {
    "name": "unnamed",
    "modality": "any",
    "grid": {"shape": [128, 128, 128]},
    "normalization": {"type": "percentile", "low": 1, "high": 99},
}

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ModelSpec = Union[None, str, os.PathLike, RecursiveCascadeNetwork, Predictor, "Model"]


def select_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but no CUDA GPU is available")
    return device


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bf16 natively, so that bf16 autocast speeds the networks up rather than
    emulating: a CUDA GPU of compute capability ≥ 8 (Ampere on; ROCm GPUs that support it); an x86 CPU with
    AVX-512 BF16 or AMX; an Arm CPU whose oneDNN build has bf16 kernels."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.version.hip:
            return torch.cuda.is_bf16_supported()
        return torch.cuda.get_device_properties(device).major >= 8
    if device.type != "cpu":
        return False
    try:
        if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
            # oneDNN's own check (mkldnn._is_mkldnn_bf16_supported) also says yes on plain AVX-512, which emulates.
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without these probes, a build without oneDNN
        return False


def _complete_card(card: Optional[dict], name: str) -> dict:
    """``card`` with the grid, normalisation and name of :data:`DEFAULT_CARD` filled in where missing."""
    full = copy.deepcopy(DEFAULT_CARD)
    full["name"] = name
    full.update(copy.deepcopy(card or {}))
    return full


@dataclass
class Model:
    """A resolved model: ``name``, completed ``card``, and either a ``network`` or a ``predictor``."""

    name: str
    card: dict
    network: Optional[RecursiveCascadeNetwork] = None
    predictor: Optional[Predictor] = None

    def predict(
        self,
        fixed: torch.Tensor,
        moving: torch.Tensor,
        *,
        cascades: Optional[int] = None,
        repeat: int = 1,
        device: torch.device = torch.device("cpu"),
        callback: Optional[Callable[[int, int], None]] = None,
        amp: Optional[bool] = None,
        symmetric: bool = False,
        flip_average: bool = False,
    ) -> torch.Tensor:
        """The composed pull-back flow ``(1, 3, X, Y, Z)`` (voxels of the network grid) on the CPU.

        ``cascades``: use only the first k deformable cascades; ``repeat``: test-time shared-weight
        repeats (1 … :data:`MAX_REPEAT`); ``amp``: run the networks under bf16 autocast (warping and
        composition stay fp32) or not, for this call only (``None``: the network's own setting). All three
        need a :class:`RecursiveCascadeNetwork`. ``symmetric``: also predict the reverse pair (moving →
        fixed) and return the mean of the forward flow and the reverse flow's inverse
        (:func:`~rcreg.spatial.invert_flow`): swapping the images gives (to first order) the inverse
        result, and an image paired with itself hardly moves (what is left is second order in the field); twice
        the network's time. ``flip_average``: every prediction is the mean over the pair as it is and mirrored
        along each grid axis (:data:`FLIP_VIEWS`, each mirrored flow mapped back by
        :func:`~rcreg.spatial.mirror_flow`): four times the network's time (docs/registration.md#flip-average).
        """
        if not 1 <= repeat <= MAX_REPEAT:
            raise ValueError(f"--repeat must be 1…{MAX_REPEAT}, got {repeat}")
        fixed, moving = fixed.to(device), moving.to(device)
        options = dict(cascades=cascades, repeat=repeat, device=device, amp=amp)
        views = FLIP_VIEWS if flip_average else ((),)
        passes = len(views) * (2 if symmetric else 1)
        done = 0

        def estimate(f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            nonlocal done
            total = None
            for axes in views:
                report = callback and (lambda d, t, offset=done: callback(offset * t + d, passes * t))
                flow = mirror_flow(self._flow(mirror(f, axes), mirror(m, axes), callback=report, **options), axes)
                total = flow if total is None else total + flow
                done += 1
            return total / len(views)

        with torch.inference_mode():
            flow = estimate(fixed, moving)
            if symmetric:
                flow = 0.5 * (flow + invert_flow(estimate(moving, fixed)))
        return flow.float().cpu()

    def _flow(self, fixed: torch.Tensor, moving: torch.Tensor, *, cascades: Optional[int], repeat: int,
              device: torch.device, callback: Optional[Callable[[int, int], None]], amp: Optional[bool]) -> torch.Tensor:
        """One prediction for (fixed, moving), on ``device`` (see :meth:`predict`)."""
        if self.network is not None:
            if cascades is not None and not 0 <= cascades <= self.network.n_cascades:
                raise ValueError(f"--cascades must be 0…{self.network.n_cascades} for model {self.name}, got {cascades}")
            self.network.to(device).eval()
            own = self.network.amp
            self.network.amp = own if amp is None else amp
            try:
                flow = self.network(fixed, moving, repeat=repeat, callback=callback, cascades=cascades).flow
            finally:
                self.network.amp = own
        else:
            if cascades is not None or repeat != 1 or amp:
                raise ValueError(f"cascades/repeat/amp need a recursive cascade network; {self.name} is a plain predictor")
            flow = self.predictor(fixed, moving)
            if callback:
                callback(1, 1)
        if tuple(flow.shape) != (1, 3, *fixed.shape[2:]):
            raise ValueError(f"model {self.name} returned a flow of shape {tuple(flow.shape)}, "
                             f"expected {(1, 3, *fixed.shape[2:])}")
        return flow.float()


def training_steps(card: dict) -> int:
    """All training steps behind a model: its own run plus every run it was fine-tuned from (``training.init``)."""
    total, training = 0, card.get("training") or {}
    while training:
        total += int(training.get("iterations") or 0)
        training = (training.get("init") or {}).get("training") or {}
    return total


def list_models() -> list[tuple[str, dict]]:
    """Installed (bundled) models as ``(name, card)``, sorted by name; unreadable files are skipped."""
    found = []
    for path in sorted(MODELS_DIR.glob("*.pt")):
        try:
            found.append((path.stem, _complete_card(load_checkpoint(path).get("card"), path.stem)))
        except CheckpointError:
            continue
    return found


def default_model(modality: Optional[str] = None, region: Optional[str] = None) -> str:
    """Name of the installed model to use when none is given.

    The models whose card has ``modality`` (all, when none has it); of those, the ones for ``region``
    (cards without a ``region``, or ``"any"``, fit every region); then the only one, else the one whose
    card says ``"default": true``. Returns :data:`rcreg.options.NO_MODEL` (refinement alone) when every
    model of the modality is for another region: a head CT is not registered by a body CT model.
    """
    models = list_models()
    if not models:
        raise ValueError(
            f"no registration model is installed (none in {MODELS_DIR}); pass --model with a checkpoint file"
        )
    if modality:
        matching = [(n, c) for n, c in models if str(c.get("modality", "")).lower() == modality.lower()]
        if matching:
            models = matching
            if region:
                models = [(n, c) for n, c in matching if c.get("region", "any") in ("any", region)]
                if not models:
                    return NO_MODEL
    if len(models) == 1:
        return models[0][0]
    defaults = [n for n, c in models if c.get("default")]
    if defaults:
        return defaults[0]
    raise ValueError(f"several models are installed ({', '.join(n for n, _ in models)}); choose one with --model")


def resolve_model(model: ModelSpec = None, *, modality: Optional[str] = None) -> Model:
    """Turn ``model`` into a :class:`Model`.

    Args:
        model: a resolved :class:`Model` (returned as is); ``None``: the installed model for ``modality``,
            else the only one installed, else the one whose card says ``"default": true``; an installed
            model's name (:func:`list_models`); a checkpoint path; a :class:`RecursiveCascadeNetwork`; or a
            predictor callable ``f(fixed, moving) -> flow``.
        modality: ``"CT"``, ``"MR"``, … (a card's ``modality``), used only when ``model`` is ``None``.

    Returns:
        The :class:`Model`: its name, completed card and network or predictor.

    Raises:
        rcreg.checkpoint.CheckpointError: an unknown model name, or a file that is not a valid rcreg
            checkpoint (loaded with ``weights_only=True``, never executing pickled code).
        ValueError: no installed model to choose from, or several and none for ``modality`` (one line).
        TypeError: ``model`` of another type.
    """
    if isinstance(model, Model):
        return model
    if isinstance(model, RecursiveCascadeNetwork):
        return Model("network", _complete_card(getattr(model, "card", None), "network"), network=model)
    if model is not None and callable(model) and not isinstance(model, (str, os.PathLike)):
        name = getattr(model, "__name__", type(model).__name__)
        return Model(name, _complete_card(getattr(model, "card", None), name), predictor=model)
    if model is None:
        model = default_model(modality)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a name, a checkpoint path, a network or a callable, not {type(model).__name__}")
    path = Path(model)
    bundled = MODELS_DIR / f"{model}.pt"
    if not path.exists() and isinstance(model, str) and bundled.is_file():
        path = bundled
    if not path.exists():  # anything else there (a folder, a FIFO) is refused by the checkpoint reader
        installed = [n for n, _ in list_models()]
        raise CheckpointError(
            f"unknown model {str(model)!r}: not a checkpoint file and not an installed model "
            f"(installed: {', '.join(installed) or 'none'})"
        )
    network, card = model_from_checkpoint(path)
    name = path.stem
    return Model(name, _complete_card(card, name), network=network)

