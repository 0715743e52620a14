"""Recursive cascaded networks: an affine cascade + n deformable cascades composed exactly."""
from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as recompute_in_backward

from .networks import AffineNetwork, build_network
from .spatial import affine_flow, apply_matrix, compose, integrate_velocity, warp


@dataclass
class CascadeOutput:
    """Result of a forward pass (all tensors on the network grid, fp32).

    flow: composed pull-back flow ``(B, 3, X, Y, Z)`` in voxels; warped: the moving image resampled
    once through it ``(B, C, X, Y, Z)``; stage_flows: each deformable cascade's own flow, in order of
    application (``n × repeat`` entries); affine: ``(A, b)`` of the affine cascade, or ``None``.
    """

    flow: torch.Tensor
    warped: torch.Tensor
    stage_flows: list[torch.Tensor] = field(default_factory=list)
    affine: Optional[tuple[torch.Tensor, torch.Tensor]] = None


ARCHITECTURE = ("base", "n_cascades", "affine", "width", "level_widths", "affine_levels", "affine_translation",
                "diffeomorphic")
"""The constructor options stored in checkpoints (``model.config``); the others are run-time choices."""


class RecursiveCascadeNetwork(nn.Module):
    """``model(fixed, moving, repeat=1)``: affine cascade (optional) then ``n_cascades`` base networks.

    Cascade k sees (fixed, moving warped by the composition of flows 1..k−1). Each deformable flow is
    scaled by 1/n; at test time ``repeat=r`` applies every cascade r times with shared weights (n×r).

    Options: ``width`` scales the channels of every network; ``level_widths`` (six factors, finest level
    first; VTN only) replaces it for each encoder level of the deformable networks (the affine one keeps
    ``width``), so the fine levels can be wider without the coarse ones' weights growing; ``affine_levels`` and
    ``affine_translation`` shape the affine network (:class:`~rcreg.networks.AffineNetwork`);
    ``diffeomorphic`` treats each deformable cascade's (scaled) output as a stationary velocity field
    and integrates it by scaling and squaring before composition, so every cascade's map, and hence
    their composition, has det J > 0 (the flows in ``stage_flows`` are then the integrated ones);
    ``checkpointing`` (gradient checkpointing; the old keyword ``checkpoint`` still works, deprecated)
    recomputes each cascade's activations in the backward pass (memory ≈ one cascade);
    ``amp`` runs the networks under bf16 autocast (warping stays fp32); ``channels_last`` uses the
    channels-last-3d memory format.
    """

    def __init__(
        self,
        base: str = "vtn",
        n_cascades: int = 3,
        affine: bool = True,
        width: float = 1.0,
        *,
        level_widths: Sequence[float] | None = None,
        affine_levels: int = 6,
        affine_translation: str = "voxels",
        diffeomorphic: bool = False,
        checkpointing: bool = False,
        amp: bool = False,
        channels_last: bool = False,
        checkpoint: Optional[bool] = None,
    ):
        super().__init__()
        if checkpoint is not None:
            warnings.warn("RecursiveCascadeNetwork(checkpoint=...) is deprecated: use checkpointing=...",
                          DeprecationWarning, stacklevel=2)
            checkpointing = checkpoint
        if n_cascades < 0 or (n_cascades == 0 and not affine):
            raise ValueError("need at least one cascade (affine or deformable)")
        if level_widths is not None:
            level_widths = [float(w) for w in level_widths]
            if base != "vtn" or len(level_widths) != 6 or min(level_widths) <= 0:
                raise ValueError(f"level_widths needs the vtn base network and six positive factors, got base "
                                 f"{base!r} and {level_widths}")
        self.config = dict(base=base, n_cascades=n_cascades, affine=affine, width=width, level_widths=level_widths,
                           affine_levels=affine_levels, affine_translation=affine_translation,
                           diffeomorphic=diffeomorphic)
        self.affine = AffineNetwork(width=width, levels=affine_levels, translation=affine_translation) if affine else None
        self.cascades = nn.ModuleList(build_network(base, width=level_widths or width) for _ in range(n_cascades))
        self.diffeomorphic = diffeomorphic
        self.checkpointing = checkpointing
        self.amp = amp
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last_3d)

    @property
    def n_cascades(self) -> int:
        return len(self.cascades)

    @classmethod
    def architecture(cls, config: Mapping[str, Any]) -> dict:
        """A stored architecture (a checkpoint's ``model`` entry) completed with the defaults of the
        options it predates, so it compares equal to ``model.config`` of the network it builds."""
        parameters = inspect.signature(cls.__init__).parameters
        return {**{name: parameters[name].default for name in ARCHITECTURE}, **config}

    def _run(self, net: nn.Module, fixed: torch.Tensor, moving: torch.Tensor):
        """One network on (fixed, moving), under bf16 autocast if ``amp``; outputs in fp32."""
        x = torch.cat([fixed, moving], dim=1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        autocast = (
            torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
            if self.amp
            else contextlib.nullcontext()
        )
        with autocast:
            out = net(x)
        if isinstance(out, tuple):
            return tuple(o.float() for o in out)
        return out.float()

    def _step(self, net: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, flow: torch.Tensor,
              matrix: Optional[torch.Tensor], scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One deformable cascade: its own flow f on (fixed, moving∘flow) and the composed flow.

        After the affine cascade (``matrix`` given) the composition is the exact ``u = a + A f`` (the
        linear affine field is never interpolated, so no border clamping); later ``u = compose(u, f)``.
        With ``diffeomorphic`` the network's output is a velocity field and f its exponential's displacement.
        """
        f = self._run(net, fixed, warp(moving, flow)) * scale
        if self.diffeomorphic:
            f = integrate_velocity(f)
        return f, (flow + apply_matrix(matrix, f) if matrix is not None else compose(flow, f))

    def _call(self, fn: Callable, *args):
        """``fn(*args)``, recomputed in the backward pass when ``checkpointing`` is on (only its inputs
        and outputs are kept: for a cascade step, the flows — not the network's activations, the
        warped image or the sampling grids)."""
        if self.checkpointing and torch.is_grad_enabled():
            return recompute_in_backward(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(
        self,
        fixed: torch.Tensor,
        moving: torch.Tensor,
        repeat: int = 1,
        callback: Optional[Callable[[int, int], None]] = None,
        cascades: Optional[int] = None,
    ) -> CascadeOutput:
        """fixed, moving: ``(B, 1, X, Y, Z)`` on the same grid. ``callback(done, total)`` reports progress.

        ``cascades=k`` runs only the first k deformable cascades (the 1/n scale of all n is kept).
        """
        if fixed.shape != moving.shape:
            raise ValueError(f"fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} differ in shape")
        if repeat < 1:
            raise ValueError(f"repeat must be ≥ 1, got {repeat}")
        shape = fixed.shape[2:]
        nets = self.cascades[:cascades] if cascades is not None else self.cascades
        total = (self.affine is not None) + len(nets) * repeat
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if callback:
                callback(done, total)

        flow = torch.zeros(fixed.shape[0], 3, *shape, device=fixed.device)
        affine = None
        if self.affine is not None:
            affine = self._call(self._run, self.affine, fixed, moving)
            flow = affine_flow(*affine, shape)
            tick()
        stage_flows = []
        scale = 1.0 / max(self.n_cascades, 1)
        for net in nets:
            for _ in range(repeat):
                matrix = affine[0] if affine is not None and not stage_flows else None
                f, flow = self._call(self._step, net, fixed, moving, flow, matrix, scale)
                stage_flows.append(f)
                tick()
        return CascadeOutput(flow=flow, warped=warp(moving, flow), stage_flows=stage_flows, affine=affine)
