"""Function-preserving widening of a trained VTN cascade (the Net2WiderNet idea, Chen et al. 2016).

Every hidden channel of a widened level is copied (twice from width 0.25 to 0.5); a layer reading copied
channels takes its weight for the original channel split among the copies, so the wide network computes the
same flow as the narrow one (to float rounding) and training continues from the narrow model's accuracy instead of
from scratch. The splits are unequal (random, summing to the original weight) so the copies receive
different gradients and can learn different features. Image inputs (2 channels), flows (3) and the
affine head's 12 outputs are never copied.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..cascade import RecursiveCascadeNetwork
from ..networks.affine import AffineNetwork
from ..networks.layers import VTNEncoder
from ..networks.vtn import VTN

__all__ = ["widen_network"]


@dataclass(frozen=True)
class _Channels:
    """Where each channel of a wide tensor comes from: ``source[j]`` is its channel in the narrow tensor of
    ``narrow`` channels."""

    source: torch.Tensor
    narrow: int

    @classmethod
    def kept(cls, n: int) -> _Channels:
        return cls(torch.arange(n), n)

    @classmethod
    def copied(cls, n: int, factor: int) -> _Channels:
        return cls(torch.arange(n).repeat_interleave(factor), n)

    def __add__(self, other: _Channels) -> _Channels:  # torch.cat of the two tensors along channels
        return _Channels(torch.cat([self.source, other.source + self.narrow]), self.narrow + other.narrow)

    def flattened(self, voxels: int) -> _Channels:
        """The same channels flattened with ``voxels`` values each (``x.flatten(1)`` of ``(B, C, …)``)."""
        offsets = torch.arange(voxels)
        return _Channels((self.source[:, None] * voxels + offsets).ravel(), self.narrow * voxels)


def _widened_weight(weight: torch.Tensor, outputs: _Channels, inputs: _Channels, out_dim: int, in_dim: int,
                    noise: float, generator: torch.Generator) -> torch.Tensor:
    """``weight`` with its output channels (axis ``out_dim``) copied as ``outputs`` says and its input channels
    (axis ``in_dim``) copied as ``inputs`` says, each input weight split among its copies: shares
    ``(1 + e_m − mean(e))/k`` over the k copies m, ``e ~ U(−noise, noise)``, so they sum to the original."""
    wide = weight.index_select(out_dim, outputs.source).index_select(in_dim, inputs.source)
    counts = torch.bincount(inputs.source, minlength=inputs.narrow).to(weight.dtype)
    e = (torch.rand(wide.shape, generator=generator, dtype=weight.dtype) * 2 - 1) * noise
    mean = torch.zeros_like(e.index_select(in_dim, torch.arange(inputs.narrow)))
    mean.index_add_(in_dim, inputs.source, e)
    shape = [1] * wide.dim()
    shape[in_dim] = -1
    mean = mean.index_select(in_dim, inputs.source) / counts[inputs.source].view(shape)
    return wide * (1 + e - mean) / counts[inputs.source].view(shape)


def _widen_layer(narrow: nn.Module, wide: nn.Module, inputs: _Channels, outputs: _Channels, noise: float,
                 generator: torch.Generator) -> None:
    """Fill ``wide`` (a Conv3d, ConvTranspose3d or Linear) from ``narrow`` of the same kind."""
    out_dim, in_dim = (1, 0) if isinstance(narrow, nn.ConvTranspose3d) else (0, 1)
    expected = list(narrow.weight.shape)
    expected[out_dim], expected[in_dim] = len(outputs.source), len(inputs.source)
    if list(wide.weight.shape) != expected:
        raise ValueError(f"cannot widen a {narrow} into a {wide}: expected a weight of shape {expected}")
    wide.weight.copy_(_widened_weight(narrow.weight, outputs, inputs, out_dim, in_dim, noise, generator))
    if narrow.bias is not None:
        wide.bias.copy_(narrow.bias.index_select(0, outputs.source))


def _level_factors(narrow: VTNEncoder, wide: VTNEncoder) -> list[int]:
    """How many copies of each narrow channel each encoder level of ``wide`` holds (integers ≥ 1)."""
    factors = [w // n for n, w in zip(narrow.channels, wide.channels)]
    if any(f < 1 or f * n != w for f, n, w in zip(factors, narrow.channels, wide.channels)):
        raise ValueError(f"cannot widen encoder channels {narrow.channels} into {wide.channels}: every level "
                         f"needs a whole number of copies of its channels")
    return factors


def _widen_encoder(narrow: VTNEncoder, wide: VTNEncoder, noise: float, generator: torch.Generator) -> list[_Channels]:
    """Fill ``wide``'s convolutions; returns the channels of every level's output (the skips)."""
    previous, skips = _Channels.kept(narrow.levels[0][0][0].in_channels), []
    for narrow_stage, wide_stage, factor in zip(narrow.levels, wide.levels, _level_factors(narrow, wide)):
        for narrow_block, wide_block in zip(narrow_stage, wide_stage):
            outputs = _Channels.copied(narrow_block[0].out_channels, factor)
            _widen_layer(narrow_block[0], wide_block[0], previous, outputs, noise, generator)
            previous = outputs
        skips.append(previous)
    return skips


def _widen_vtn(narrow: VTN, wide: VTN, noise: float, generator: torch.Generator) -> None:
    skips = _widen_encoder(narrow.encoder, wide.encoder, noise, generator)
    flow = _Channels.kept(3)
    feat = skips[-1]
    for index, skip in enumerate(reversed(skips[:-1])):
        _widen_layer(narrow.predict[index], wide.predict[index], feat, flow, noise, generator)
        _widen_layer(narrow.up_flow[index], wide.up_flow[index], flow, flow, noise, generator)
        _widen_layer(narrow.up_feat[index][0], wide.up_feat[index][0], feat, skip, noise, generator)  # as many
        feat = skip + skip + flow  # torch.cat([skip, up_feat(feat), flow])
    _widen_layer(narrow.final, wide.final, feat, flow, noise, generator)


def _widen_affine(narrow: AffineNetwork, wide: AffineNetwork, noise: float, generator: torch.Generator) -> None:
    last = _widen_encoder(narrow.encoder, wide.encoder, noise, generator)[-1]
    _widen_layer(narrow.head, wide.head, last.flattened(8), _Channels.kept(12), noise, generator)  # pooled to 2³


def widen_network(model: RecursiveCascadeNetwork, *, width: float | None = None,
                  level_widths: Sequence[float] | None = None, noise: float = 0.1,
                  seed: int = 0) -> RecursiveCascadeNetwork:
    """``model`` (a VTN cascade) rebuilt with a larger ``width`` and/or ``level_widths`` (the
    :class:`~rcreg.cascade.RecursiveCascadeNetwork` options), computing the same flow to float rounding.

    Each level's new channel count must be a whole multiple of its old one (width 0.25 → 0.5 doubles every
    level; ``level_widths=[0.5, 0.5, 0.5, 0.25, 0.25, 0.25]`` only the three finest). ``noise``: how unequal
    the splits of a copied channel's weights are (0: equal, and the copies would stay identical under
    training). Raises ``ValueError`` for other base networks or channel counts that do not fit.
    """
    config = dict(model.config)
    if config["base"] != "vtn":
        raise ValueError(f"widening supports the vtn base network, not {config['base']!r}")
    overrides = {k: v for k, v in (("width", width), ("level_widths", level_widths)) if v is not None}
    if not overrides:
        raise ValueError("widening needs a new width or level_widths")
    wide = RecursiveCascadeNetwork(**{**config, **overrides})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if model.affine is not None:
            _widen_affine(model.affine, wide.affine, noise, generator)
        for narrow_net, wide_net in zip(model.cascades, wide.cascades):
            _widen_vtn(narrow_net, wide_net, noise, generator)
    return wide.eval()
