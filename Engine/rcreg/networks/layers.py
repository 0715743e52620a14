"""Building blocks shared by the base networks."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv_block(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """3³ convolution (padding 1) + LeakyReLU(0.1); stride 2 halves each size, rounding up."""
    return nn.Sequential(nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1), nn.LeakyReLU(0.1))


def crop_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Crop the spatial axes of ``x`` (``(B, C, X, Y, Z)``) to those of ``like`` (never pads)."""
    return x[..., : like.shape[2], : like.shape[3], : like.shape[4]]


def scaled(channels: int, width: float) -> int:
    """Channel count ``channels × width``, at least 1."""
    return max(1, int(round(channels * width)))


class VTNEncoder(nn.Module):
    """The VTN encoder: six stride-2 levels (or the first ``levels``), widths c·(1, 2, 4, 8, 16, 32), c = 16·width;
    ``width`` may also be one factor per level, finest first (level l then has ``scaled(16, width[l])·2^l``).

    ``forward`` returns the skip features of every level, finest first, each ``(B, C_l, ⌈X/2^l⌉, …)``.
    """

    def __init__(self, in_channels: int = 2, width: float | Sequence[float] = 1.0, levels: int = 6):
        super().__init__()
        if not 1 <= levels <= 6:
            raise ValueError(f"the VTN encoder has 1 to 6 levels, got {levels}")
        widths = list(width) if isinstance(width, Sequence) else [width] * 6
        if len(widths) != 6 or min(widths) <= 0:
            raise ValueError(f"the VTN encoder needs six positive level widths, got {widths}")
        self.channels = [scaled(16, w) * 2 ** level for level, w in enumerate(widths)][:levels]
        stages = []
        prev = in_channels
        for level, ch in enumerate(self.channels):
            blocks = [conv_block(prev, ch, stride=2)]
            if level >= 2:  # conv3_1 … conv6_1
                blocks.append(conv_block(ch, ch))
            stages.append(nn.Sequential(*blocks))
            prev = ch
        self.levels = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for level in self.levels:
            x = level(x)
            skips.append(x)
        return skips
