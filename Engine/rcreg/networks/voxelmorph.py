"""VoxelMorph (VM-2 layout) deformable base network."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register_network
from .layers import conv_block, scaled


@register_network("voxelmorph")
class VoxelMorph(nn.Module):
    """U-Net with encoder widths 16, 32, 32, 32 (stride 2) and decoder 32, 32, 32, 32, 32, 16, 16.

    Input ``(B, 2, X, Y, Z)``, any sizes ≥ 2; output flow ``(B, 3, X, Y, Z)`` in voxels. Upsampling is
    nearest-neighbour to the skip's exact size. ``width`` scales all channels.
    """

    def __init__(self, in_channels: int = 2, width: float = 1.0):
        super().__init__()
        enc = [scaled(c, width) for c in (16, 32, 32, 32)]
        dec = [scaled(c, width) for c in (32, 32, 32, 32, 32, 16, 16)]
        self.encoder = nn.ModuleList()
        prev = in_channels
        for ch in enc:
            self.encoder.append(conv_block(prev, ch, stride=2))
            prev = ch
        # Decoder: conv at 1/16, 1/8, 1/4 then upsample + concatenate the next finer encoder level;
        # two convs at 1/2, upsample + concatenate the input, two convs at full resolution.
        skip_ch = [enc[2], enc[1], enc[0]]
        self.decoder = nn.ModuleList()
        for out_ch, skip in zip(dec[:3], skip_ch):
            self.decoder.append(conv_block(prev, out_ch))
            prev = out_ch + skip
        self.at_half = nn.Sequential(conv_block(prev, dec[3]), conv_block(dec[3], dec[4]))
        self.full = nn.Sequential(conv_block(dec[4] + in_channels, dec[5]), conv_block(dec[5], dec[6]))
        self.flow = nn.Conv3d(dec[6], 3, 3, padding=1)
        nn.init.normal_(self.flow.weight, std=1e-5)
        nn.init.zeros_(self.flow.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.encoder:
            feats.append(conv(feats[-1]))
        y = feats.pop()
        for conv in self.decoder:
            skip = feats.pop()
            y = torch.cat([F.interpolate(conv(y), size=skip.shape[2:], mode="nearest"), skip], dim=1)
        y = F.interpolate(self.at_half(y), size=x.shape[2:], mode="nearest")
        return self.flow(self.full(torch.cat([y, x], dim=1)))
