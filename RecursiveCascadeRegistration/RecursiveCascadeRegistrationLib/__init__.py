"""GUI-free part of the RecursiveCascadeRegistration Slicer module (imports without Qt, e.g. under slicer-core)."""
from .logic import RecursiveCascadeRegistrationLogic, RegistrationCancelled

__all__ = ["RecursiveCascadeRegistrationLogic", "RegistrationCancelled"]
