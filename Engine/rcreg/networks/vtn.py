"""VTN deformable base network (Zhao et al., the base of Recursive Cascaded Networks)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import register_network
from .layers import VTNEncoder, crop_to


def _upsample(in_ch: int, out_ch: int, activate: bool) -> nn.Module:
    """4³ stride-2 transposed convolution (doubles every size)."""
    conv = nn.ConvTranspose3d(in_ch, out_ch, 4, stride=2, padding=1, bias=activate)
    return nn.Sequential(conv, nn.LeakyReLU(0.1)) if activate else conv


@register_network("vtn")
class VTN(nn.Module):
    """VTN stage: encoder + decoder with multi-scale flow prediction and skip concatenation.

    Input ``(B, 2, X, Y, Z)`` (fixed, moving), any sizes ≥ 2; output flow ``(B, 3, X, Y, Z)`` in voxels,
    the last prediction multiplied by ``flow_scale`` (20 in the paper). ``width`` scales all channels
    (one factor, or one per encoder level, finest first: the decoder follows its skips).
    """

    def __init__(self, in_channels: int = 2, width: float | Sequence[float] = 1.0, flow_scale: float = 20.0):
        super().__init__()
        self.encoder = VTNEncoder(in_channels, width)
        ch = self.encoder.channels  # finest first
        self.flow_scale = flow_scale
        self.predict = nn.ModuleList()
        self.up_flow = nn.ModuleList()
        self.up_feat = nn.ModuleList()
        feat = ch[-1]
        for skip_ch in reversed(ch[:-1]):  # levels 5 … 1
            self.predict.append(nn.Conv3d(feat, 3, 3, padding=1))
            self.up_flow.append(_upsample(3, 3, activate=False))
            self.up_feat.append(_upsample(feat, skip_ch, activate=True))
            feat = 2 * skip_ch + 3
        self.final = _upsample(feat, 3, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encoder(x)
        feat = skips[-1]
        for predict, up_flow, up_feat, skip in zip(self.predict, self.up_flow, self.up_feat, reversed(skips[:-1])):
            flow = crop_to(up_flow(predict(feat)), skip)
            feat = torch.cat([skip, crop_to(up_feat(feat), skip), flow], dim=1)
        return crop_to(self.final(feat), x) * self.flow_scale
