"""The overview figure (figure.png): layout, orientation of each plane, and the deformation grid."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from rcreg.fields import displacement_transform
from rcreg.figures import CELL, GRID_COLOUR, MARGIN, TITLE, registration_figure

BOX_W, BOX_H = CELL + 2 * MARGIN, TITLE + CELL + 2 * MARGIN


def _volume() -> sitk.Image:
    """40 × 30 × 20 voxels (i, j, k), 1 × 1 × 2 mm, dark, with a bright box at high i, low j, middle k (in the
    middle axial slice only) and one at low i, middle j, high k (in the middle coronal slice only)."""
    values = np.zeros((20, 30, 40), np.float32)  # (k, j, i)
    values[8:12, 2:8, 30:38] = 100.0
    values[15:19, 13:17, 2:8] = 100.0
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.0, 1.0, 2.0))
    return image


def _panel(figure: np.ndarray, row: int, col: int) -> np.ndarray:
    """The pixels of the box of one panel (without its title)."""
    top, left = row * BOX_H + MARGIN + TITLE, col * BOX_W + MARGIN
    return figure[top:top + CELL, left:left + CELL]


def _identity(image: sitk.Image) -> sitk.Transform:
    field = sitk.Image(image.GetSize(), sitk.sitkVectorFloat64, 3)
    field.CopyInformation(image)
    return displacement_transform(field)


#: (width, height) in pixels each plane of :func:`_volume` is drawn at, fitted into the CELL box with its
#: millimetre aspect: axial 40 i × 30 j mm, coronal 40 i × 40 k mm (20 slices of 2 mm), sagittal 30 j × 40 k mm.
DRAWN = {0: (CELL, round(CELL * 30 / 40)), 1: (CELL, CELL), 2: (round(CELL * 30 / 40), CELL)}


def _slice(figure: np.ndarray, row: int, col: int) -> np.ndarray:
    """The pixels of the slice drawn in one panel (centred in its box)."""
    width, height = DRAWN[row]
    top, left = (CELL - height) // 2, (CELL - width) // 2
    return _panel(figure, row, col)[top:top + height, left:left + width]


def test_figure_layout_and_orientation(tmp_path):
    image = _volume()
    path = registration_figure(image, image, image, _identity(image), tmp_path / "figure.png", before=_identity(image))
    figure = np.asarray(Image.open(path).convert("RGB"))
    assert figure.shape == (3 * BOX_H, 5 * BOX_W, 3)
    for row in range(3):  # each slice fills exactly its place: white around it, its dark border inside
        outside = _panel(figure, row, 0).copy()
        drawn = _slice(figure, row, 0)
        width, height = DRAWN[row]
        top, left = (CELL - height) // 2, (CELL - width) // 2
        outside[top:top + height, left:left + width] = 255
        assert outside.min() == 255, row
        assert max(drawn[0].max(), drawn[-1].max(), drawn[:, 0].max(), drawn[:, -1].max()) < 128, row
    # Axial row (k = 10): columns i, rows j with the first rows on top: the box (i 30–37, j 2–7) right, top.
    # Coronal row (j = 15): columns i, rows k bottom to top: the box (i 2–7, k 15–18) left, top.
    for row, (x_expected, y_expected) in ((0, (34 / 40, 5 / 30)), (1, (5 / 40, 3 / 20))):
        width, height = DRAWN[row]
        bright = np.argwhere(_slice(figure, row, 0)[..., 0] > 127)
        y, x = (bright.mean(axis=0)[:2] + 0.5) / [height, width]
        assert abs(x - x_expected) < 0.02 and abs(y - y_expected) < 0.02, (row, x, y)
    assert _slice(figure, 2, 0).max() < 128  # the sagittal slice (i = 20) misses both boxes
    # Moving and warped are the same image here, and the checkerboard of equal slices is that slice.
    for col in (1, 2, 3):
        np.testing.assert_array_equal(_panel(figure, 0, col), _panel(figure, 0, 0))


def test_moving_column_shows_the_moving_image_through_the_initial_alignment(tmp_path):
    """The moving column is resampled through ``before`` (pull-back): a translation of +6 mm along i shows the
    axial box (i 30–37) 6 voxels lower in i, while the warped column stays where it was."""
    image = _volume()
    figure = np.asarray(Image.open(registration_figure(image, image, image, _identity(image), tmp_path / "figure.png",
                                                       before=sitk.TranslationTransform(3, (6.0, 0.0, 0.0)))).convert("RGB"))
    width, height = DRAWN[0]
    for col, x_expected in ((1, 28 / 40), (2, 34 / 40)):
        bright = np.argwhere(_slice(figure, 0, col)[..., 0] > 127)
        x = (bright.mean(axis=0)[1] + 0.5) / width
        assert abs(x - x_expected) < 0.02, (col, x)


def _grid_pixels(figure: np.ndarray, row: int) -> np.ndarray:
    return np.all(_panel(figure, row, 4) == GRID_COLOUR, axis=-1)


def test_deformation_grid_is_drawn_in_its_column_and_ignores_a_uniform_shift(tmp_path):
    image = _volume()
    still = np.asarray(Image.open(registration_figure(image, image, image, _identity(image), tmp_path / "a.png",
                                                      before=_identity(image))).convert("RGB"))
    assert all(_grid_pixels(still, row).any() for row in range(3))
    assert not any(np.all(_panel(still, 0, col) == GRID_COLOUR, axis=-1).any() for col in range(4))
    # A uniform shift is removed (the slice's mean displacement), so the grid does not move.
    shifted = np.asarray(Image.open(registration_figure(image, image, image, sitk.TranslationTransform(3, (3.0, -2.0, 0.0)),
                                                        tmp_path / "b.png", before=_identity(image))).convert("RGB"))
    np.testing.assert_array_equal(_grid_pixels(shifted, 0), _grid_pixels(still, 0))


def _lines(figure: np.ndarray, row: int, vertical: bool) -> np.ndarray:
    """Pixel columns (``vertical``) or rows of the straight grid lines in a deformation-grid panel."""
    red = _grid_pixels(figure, row)
    along = red.any(axis=1).sum() if vertical else red.any(axis=0).sum()  # the grid's extent across the lines
    return np.nonzero(red.sum(axis=0 if vertical else 1) > 0.5 * along)[0]


@pytest.mark.parametrize("row, component, voxel_mm, count, pixels, flipped", [
    (0, 0, 1.0, 40, CELL / 40, False),  # axial: vertical lines along i, left to right
    (1, 2, 2.0, 20, CELL / 20, True),   # coronal: horizontal lines along k, drawn bottom to top
])
def test_deformation_grid_lines_move_with_the_field(tmp_path, row, component, voxel_mm, count, pixels, flipped):
    """A field moving the first half of an in-plane axis by −1 voxel along it and the rest by +1 (mean 0):
    the grid lines across that axis (``grid_lines=8``: every ``count // 8``-th voxel) are drawn one voxel
    before / after where they are for no motion, on the side the plane's orientation says."""
    image = _volume()
    values = np.zeros((20, 30, 40, 3))  # (k, j, i, component)
    axis = 2 - component  # array axis of the component's image axis
    half = np.arange(values.shape[axis]) < values.shape[axis] // 2
    values[..., component] = np.expand_dims(np.where(half, -voxel_mm, voxel_mm), [a for a in range(3) if a != axis])
    field = sitk.GetImageFromArray(values, isVector=True)
    field.CopyInformation(image)
    step = count // 8
    for name, transform, offset in (("still", _identity(image), lambda c: 0.0),
                                    ("bent", displacement_transform(field), lambda c: -1.0 if c < count // 2 else 1.0)):
        figure = np.asarray(Image.open(registration_figure(image, image, image, transform, tmp_path / f"{name}.png",
                                                           before=_identity(image), grid_lines=8)).convert("RGB"))
        positions = np.array([c + offset(c) for c in range(0, count, step)])
        wanted = ((count - 0.5 - positions) if flipped else (positions + 0.5)) * pixels
        wanted = wanted[(wanted >= 0) & (wanted < CELL)]  # a line pushed out of the slice is cut off
        found = _lines(figure, row, vertical=not flipped)
        distance = np.abs(found[None, :] - wanted[:, None]).min(axis=1)
        assert len(found) == len(wanted) and distance.max() <= 1.0, (name, found, wanted)
