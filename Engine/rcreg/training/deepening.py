"""Function-preserving deepening of a trained cascade: more deformable cascades, the same flow.

Every deformable cascade's flow is scaled by 1/n (:class:`~rcreg.cascade.RecursiveCascadeNetwork`), so going
from n to m cascades multiplies the old cascades' output layers by m/n, and the new cascades (appended after
the old ones) get a zero output layer: they output no flow until training moves them, and the deeper network
computes the source's flow to float rounding. The gradient reaching a zero output layer is not zero (it
is the product of the upstream error and the layer's input features), so the new cascades do learn.
"""
from __future__ import annotations

import torch
from torch import nn

from ..cascade import RecursiveCascadeNetwork
from ..networks.voxelmorph import VoxelMorph
from ..networks.vtn import VTN

__all__ = ["deepen_network"]


def _output_layer(net: nn.Module) -> nn.Conv3d | nn.ConvTranspose3d:
    """The linear layer whose output, times a constant, is the base network's flow."""
    if isinstance(net, VTN):
        return net.final
    if isinstance(net, VoxelMorph):
        return net.flow
    raise ValueError(f"deepening supports the vtn and voxelmorph base networks, not {type(net).__name__}")


def deepen_network(model: RecursiveCascadeNetwork, n_cascades: int) -> RecursiveCascadeNetwork:
    """``model`` rebuilt with ``n_cascades`` deformable cascades (at least its own), computing the same flow.

    The first ones are copies of the model's cascades, their output layers scaled by
    ``n_cascades / model.n_cascades``; the rest start with a zero output layer (an identity step: with
    ``diffeomorphic`` a zero velocity). Raises ``ValueError`` for fewer cascades than the model has, a model
    without deformable cascades, or an unsupported base network.
    """
    before = model.n_cascades
    if before == 0:
        raise ValueError("deepening needs a model with at least one deformable cascade")
    if n_cascades < before:
        raise ValueError(f"deepening cannot go from {before} to {n_cascades} cascades (use cascades=k at "
                         f"inference to run only the first k)")
    deep = RecursiveCascadeNetwork(**{**model.config, "n_cascades": n_cascades})
    with torch.no_grad():
        if model.affine is not None:
            deep.affine.load_state_dict(model.affine.state_dict())
        for source, target in zip(model.cascades, deep.cascades):
            target.load_state_dict(source.state_dict())
            for tensor in _output_layer(target).parameters():
                tensor.mul_(n_cascades / before)
        for target in deep.cascades[before:]:
            for tensor in _output_layer(target).parameters():
                tensor.zero_()
    return deep.eval()
