"""The VTN affine network: the top-level cascade."""
from __future__ import annotations

import torch
from torch import nn

from .layers import VTNEncoder


class AffineNetwork(nn.Module):
    """VTN encoder + a layer over the whole coarsest map giving ``W`` (9 values) and ``b`` (3 values).

    Input ``(B, 2, X, Y, Z)``; returns ``(A, b)`` with ``A = I + W`` ``(B, 3, 3)`` and ``b`` ``(B, 3)``
    in voxels, for the map ``x ↦ A x + b`` on grid-centred coordinates. Starts at the identity.

    ``levels``: encoder levels; the head reads the last one, average-pooled to 2³. The paper's 6 give
    a 2³ map at a 128³ grid but a single voxel at 64³, where the head can no longer tell where
    features are (it then barely senses translations or rotations); 5 levels give 2³ at 64³.

    ``translation``: the unit of the head's raw translation output. ``"voxels"`` (the paper's) trains
    slowly: Adam moves each output by about the learning rate per step, i.e. 1e-4 voxel, while a
    matrix entry of that size moves the grid's corners by 1e-4·(size/2) voxels. ``"extent"`` measures
    it in half grid extents (PyTorch ``affine_grid`` units), so both learn at the same pace and a
    translation means the same fraction of the field of view at every grid size.
    """

    def __init__(self, in_channels: int = 2, width: float = 1.0, levels: int = 6, translation: str = "voxels"):
        super().__init__()
        if translation not in ("voxels", "extent"):
            raise ValueError(f"translation must be 'voxels' or 'extent', got {translation!r}")
        self.translation = translation
        self.encoder = VTNEncoder(in_channels, width, levels)
        self.pool = nn.AdaptiveAvgPool3d(2)
        self.head = nn.Linear(self.encoder.channels[-1] * 8, 12)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.head(self.pool(self.encoder(x)[-1]).flatten(1)).float()
        matrix = torch.eye(3, device=x.device, dtype=params.dtype) + params[:, :9].view(-1, 3, 3)
        shift = params[:, 9:]
        if self.translation == "extent":
            shift = shift * torch.tensor([(n - 1) / 2 for n in x.shape[2:]], device=x.device, dtype=shift.dtype)
        return matrix, shift
