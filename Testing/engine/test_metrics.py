"""rcreg.metrics against SimpleITK filters, brute-force nearest neighbours and analytic values."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.spatial import cKDTree

from rcreg.metrics import (
    correlation,
    dice,
    flow_summary,
    folding_fraction,
    hausdorff,
    jaccard,
    jacobian_std,
    landmark_error,
    mean_score,
    sdlogj,
)

SHAPE = (30, 26, 22)
SPACING = (0.8, 1.5, 2.5)  # anisotropic, in the arrays' (i, j, k) order


def ellipsoid(centre, radii, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    """Boolean ellipsoid with centre and radii in mm."""
    coords = [np.arange(n) * s for n, s in zip(shape, spacing)]
    grid = np.meshgrid(*coords, indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def label_maps() -> tuple[np.ndarray, np.ndarray]:
    """Two label maps with labels 1–3 as offset, differently sized convex blobs (no overlaps between labels)."""
    a = np.zeros(SHAPE, np.int16)
    b = np.zeros(SHAPE, np.int16)
    a[ellipsoid((6, 10, 15), (4, 7, 10))] = 1
    b[ellipsoid((7, 12, 17), (5, 6, 11))] = 1
    a[ellipsoid((17, 28, 30), (5, 8, 14))] = 2
    b[ellipsoid((16, 25, 33), (4, 9, 12))] = 2
    a[ellipsoid((6, 30, 12), (3, 5, 7))] = 3
    b[ellipsoid((7, 31, 10), (3, 4, 8))] = 3
    return a, b


def to_sitk(array: np.ndarray, spacing=SPACING) -> sitk.Image:
    """(i, j, k) array → SimpleITK image (arrays there are (k, j, i); spacing stays (sx, sy, sz))."""
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    image.SetSpacing(spacing)
    return image


def test_dice_and_jaccard_match_simpleitk_label_overlap():
    a, b = label_maps()
    ours_dice, ours_jaccard = dice(a, b), jaccard(a, b)
    assert sorted(ours_dice) == [1, 2, 3]
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(to_sitk(a), to_sitk(b))
    for label in (1, 2, 3):
        assert ours_dice[label] == pytest.approx(overlap.GetDiceCoefficient(label), rel=1e-9)
        assert ours_jaccard[label] == pytest.approx(overlap.GetJaccardCoefficient(label), rel=1e-9)
        assert 0.2 < ours_dice[label] < 0.95  # a real partial overlap
    assert mean_score(ours_dice) == pytest.approx(np.mean([ours_dice[k] for k in (1, 2, 3)]))


def test_dice_explicit_labels_and_empty_label():
    a, b = label_maps()
    scores = dice(a, b, labels=[2, 9])
    assert list(scores) == [2, 9]
    assert np.isnan(scores[9])
    assert mean_score(scores) == pytest.approx(scores[2])
    with pytest.raises(ValueError, match="shape"):
        dice(a, b[:-1])


def test_hausdorff_max_matches_simpleitk():
    """percentile=100 vs SimpleITK's (object-based) Hausdorff distance, in mm with anisotropic spacing.

    For convex blobs the two definitions agree: the nearest voxel of B to any voxel outside B is a surface
    voxel of B, and the distance to a convex set is a convex function, so its maximum over A is reached
    on A's surface; symmetrically for B. (Surface-based differs for non-convex or nested shapes.)
    """
    a, b = label_maps()
    ours = hausdorff(a, b, SPACING, percentile=100)
    for label in (1, 2, 3):
        filt = sitk.HausdorffDistanceImageFilter()
        filt.Execute(to_sitk((a == label).astype(np.uint8)), to_sitk((b == label).astype(np.uint8)))
        assert ours[label] == pytest.approx(filt.GetHausdorffDistance(), rel=1e-6)


def surface_points(mask: np.ndarray, spacing) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it (array border = outside), as mm coordinates."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1]
    all_in = np.ones_like(mask)
    for axis in range(3):
        for step in (-1, 1):
            all_in &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(inner & ~all_in) * np.asarray(spacing)


@pytest.mark.parametrize("percentile", [95, 50])
def test_hausdorff_percentile_matches_kdtree_brute_force(percentile):
    a, b = label_maps()
    ours = hausdorff(a, b, SPACING, percentile=percentile)
    for label in (1, 2, 3):
        pa, pb = surface_points(a == label, SPACING), surface_points(b == label, SPACING)
        a_to_b = cKDTree(pb).query(pa)[0]
        b_to_a = cKDTree(pa).query(pb)[0]
        expected = max(np.percentile(a_to_b, percentile), np.percentile(b_to_a, percentile))
        assert ours[label] == pytest.approx(expected, rel=1e-9)


def test_hausdorff_touching_array_border_and_empty():
    a = np.zeros((8, 8, 8), np.uint8)
    b = np.zeros((8, 8, 8), np.uint8)
    a[:, :, :4] = 1  # touches five faces of the array: those voxels are surface voxels too
    b[:, :, :6] = 1
    # Surfaces include the faces on the array border; the largest gap is between a's top face (k = 3) and
    # b's (k = 5) away from the side faces: 2 voxels.
    assert hausdorff(a, b, (1, 1, 1), percentile=100)[1] == pytest.approx(2.0)
    assert np.isnan(hausdorff(a, np.zeros_like(b), (1, 1, 1), labels=[1])[1])
    with pytest.raises(ValueError, match="spacing"):
        hausdorff(a, b, (1, 1))


def test_landmark_error():
    mapped = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    target = np.array([[3.0, 4.0, 0.0], [1.0, 2.0, 3.0]])
    errors, mean = landmark_error(mapped, target)
    np.testing.assert_allclose(errors, [5.0, 0.0])
    assert mean == pytest.approx(2.5)
    with pytest.raises(ValueError, match="N, 3"):
        landmark_error(mapped, target[:1])


def test_jacobian_statistics_on_analytic_determinants(rng):
    log_det = rng.normal(0.0, 0.2, SHAPE)
    detj = np.exp(log_det)
    folded = np.zeros(SHAPE, bool)
    folded[:3] = True  # 3 of 30 slices folded
    detj[folded] = -0.5
    assert folding_fraction(detj) == pytest.approx(0.1)
    assert sdlogj(detj) == pytest.approx(log_det[~folded].std(), rel=1e-12)
    assert jacobian_std(detj) == pytest.approx(np.sqrt(np.mean((detj - detj.mean()) ** 2)), rel=1e-12)
    assert folding_fraction(np.ones(5)) == 0.0 and sdlogj(np.ones(5)) == 0.0


def test_flow_summary_on_analytic_flows():
    x = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (10, 12, 9)), indexing="ij"))
    scaled = flow_summary(0.2 * x)  # uniform scaling by 1.2: det J = 1.728 everywhere
    assert scaled["folding_fraction"] == 0.0
    assert scaled["mean_detj"] == pytest.approx(1.2 ** 3)
    assert scaled["sdlogj"] == pytest.approx(0.0, abs=1e-9) and scaled["jacobian_std"] == pytest.approx(0.0, abs=1e-9)
    mirror = torch.zeros_like(x)
    mirror[0] = -2.0 * x[0]  # x₀ ↦ −x₀: det J = −1 everywhere
    assert flow_summary(mirror[None])["folding_fraction"] == 1.0
    with pytest.raises(ValueError, match="one flow"):
        flow_summary(torch.zeros(2, 3, 4, 4, 4))


def test_correlation_matches_corrcoef(rng):
    a = rng.standard_normal(SHAPE)
    b = 0.3 * a + rng.standard_normal(SHAPE)
    assert correlation(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], rel=1e-12)


@pytest.mark.parametrize("offset", [0, 1 << 30])  # small values use a lookup table, large ones a sort
def test_many_labels_match_per_label_masks(offset):
    """Thousands of labels (and values beyond 2²⁴) score the same as masks built label by label."""
    rng = np.random.default_rng(0)
    blocks = np.arange(12 * 12 * 12).reshape(12, 12, 12) + 1
    a = np.kron(blocks, np.ones((3, 3, 3), dtype=np.int64)) + offset
    a[rng.random(a.shape) < 0.05] = 0
    b = np.roll(a, 1, axis=0)
    scores, distances = dice(a, b), hausdorff(a, b, spacing=(1.0, 1.5, 2.0))
    assert len(scores) == 12 ** 3 and set(distances) == set(scores)
    for label in rng.choice(sorted(scores), 25, replace=False):
        in_a, in_b = a == label, b == label
        assert scores[label] == pytest.approx(2 * (in_a & in_b).sum() / (in_a.sum() + in_b.sum()))
        assert distances[label] == pytest.approx(hausdorff(in_a, in_b, spacing=(1.0, 1.5, 2.0))[1])
    assert dice(a, b, labels=[a.max(), -5, 7 + offset]) .keys() == {a.max(), -5, 7 + offset}
