"""The panel's choices as plain values, so the module file needs neither Qt nor the engine (which imports torch).

They repeat the engine's option lists; Testing/slicer_module checks them against ``rcreg``.
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["NO_MODEL", "FROM_FILE", "DEFAULT", "INITIAL_ALIGNMENTS", "REFINE_SIMILARITIES", "modelChoices", "modelChoice",
           "modelFromChoice"]

#: Model value "no network": register by refinement alone (``rcreg.registration.NO_MODEL``).
NO_MODEL = "none"
#: Model choice standing for a checkpoint file chosen by path.
FROM_FILE = "<file>"
#: Choice (and empty model value) that leaves a setting to the model card's default.
DEFAULT = "default"
INITIAL_ALIGNMENTS = ("none", "geometry", "mass")          # rcreg.options.ALIGNMENTS
REFINE_SIMILARITIES = ("ncc", "pearson", "mse", "mi")  # rcreg.options.SIMILARITIES


def modelChoices(bundled: Sequence[str]) -> list[str]:
    """The model selector's entries, in order: default model, bundled models, no model, checkpoint file."""
    return [DEFAULT, *bundled, NO_MODEL, FROM_FILE]


def modelChoice(model: str, bundled: Sequence[str]) -> str:
    """The entry that shows the parameter node's ``model`` (``""`` is the default model, a path a file)."""
    if not model:
        return DEFAULT
    return model if model in (*bundled, NO_MODEL) else FROM_FILE


def modelFromChoice(choice: str, path: str) -> str:
    """The parameter node's ``model`` for a selector entry and the checkpoint path editor's text."""
    if choice == DEFAULT:
        return ""
    return path if choice == FROM_FILE else choice
