"""The VTN affine network: the top-level cascade."""
from __future__ import annotations

import torch
from torch import nn

from .layers import VTNEncoder


class AffineNetwork(nn.Module):
    """VTN encoder + a layer over the whole coarsest map giving ``W`` (9 values) and ``b`` (3 values).

    Input ``(B, 2, X, Y, Z)``; returns ``(A, b)`` with ``A = I + W`` ``(B, 3, 3)`` and ``b`` ``(B, 3)``
    in voxels, for the map ``x ↦ A x + b`` on grid-centred coordinates. Starts at the identity.
    """

    def __init__(self, in_channels: int = 2, width: float = 1.0):
        super().__init__()
        self.encoder = VTNEncoder(in_channels, width)
        self.pool = nn.AdaptiveAvgPool3d(2)  # the coarsest map of a 128³ input is 2³
        self.head = nn.Linear(self.encoder.channels[-1] * 8, 12)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.head(self.pool(self.encoder(x)[-1]).flatten(1)).float()
        matrix = torch.eye(3, device=x.device, dtype=params.dtype) + params[:, :9].view(-1, 3, 3)
        return matrix, params[:, 9:]
