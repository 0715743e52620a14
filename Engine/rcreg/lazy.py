"""Lazy package exports (PEP 562): a package names what it exports and the module defining each name,
and the module is imported on first use — so ``import rcreg`` does not import torch."""
from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names ``exports`` map to submodule names.

    ``namespace`` is the package's ``globals()`` (a name is cached there on first use). Any submodule may
    also be asked for as an attribute (``rcreg.fields``)."""

    def getattr_(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            namespace[name] = value
            return value
        try:
            return importlib.import_module(f".{name}", package)
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":  # the submodule exists but needs something missing
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    def dir_() -> list:
        return sorted(set(namespace) | set(exports))

    return getattr_, dir_
