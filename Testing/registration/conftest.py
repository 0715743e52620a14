"""Fixtures of the registration tests (helpers live in volumes.py, importable by a unique name)."""
from __future__ import annotations

import numpy as np
import pytest

from volumes import blobs, make_image, rotation


@pytest.fixture
def oblique_pair():
    """(fixed, moving, shift): oblique anisotropic fixed; moving = fixed pattern shifted by ``shift`` mm,
    sampled on a differently oriented and spaced grid that covers it."""
    shift = np.array([3.0, -2.5, 4.0])
    fixed = make_image([36, 30, 14], [1.1, 1.3, 2.6], rotation(0.3, -0.2, 0.5), [-19.0, -21.0, -15.0], blobs)
    centre = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint([17.5, 14.5, 6.5]))
    direction = rotation(-0.25, 0.15, -0.4)
    size, spacing = np.array([34, 34, 30]), np.array([1.4, 1.4, 1.5])
    origin = centre + shift - direction @ (spacing * (size - 1) / 2)
    moving = make_image(size, spacing, direction, origin, lambda p: blobs(p, shift))
    return fixed, moving, shift
