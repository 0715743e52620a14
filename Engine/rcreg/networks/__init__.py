"""Base networks, chosen by name: ``build_network("vtn", width=0.5)``."""
from __future__ import annotations

from typing import Callable, Dict

from torch import nn

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def register_network(name: str):
    """Class decorator adding a deformable base network to the registry under ``name``."""

    def add(cls):
        _REGISTRY[name] = cls
        return cls

    return add


def available_networks() -> list[str]:
    """Names accepted by :func:`build_network`."""
    return sorted(_REGISTRY)


def build_network(name: str, **kwargs) -> nn.Module:
    """Instantiate the base network registered as ``name`` (e.g. ``"vtn"``, ``"voxelmorph"``)."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown base network {name!r}; choose one of {available_networks()}") from None
    return cls(**kwargs)


from .affine import AffineNetwork  # noqa: E402  (registers nothing; exported for convenience)
from .vtn import VTN  # noqa: E402
from .voxelmorph import VoxelMorph  # noqa: E402

__all__ = ["register_network", "available_networks", "build_network", "VTN", "VoxelMorph", "AffineNetwork"]
