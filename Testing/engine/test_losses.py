"""rcreg.losses against numpy references and analytic values."""
import numpy as np
import pytest
import torch

from rcreg.losses import (
    affine_determinant_loss,
    affine_orthogonality_loss,
    RegistrationLoss,
    dice_loss,
    field_loss,
    local_ncc_loss,
    mse_loss,
    pearson_loss,
    smoothness_loss,
)

SHAPE = (12, 14, 10)


def test_pearson_zero_for_identical_images():
    x = torch.randn(2, 1, *SHAPE)
    assert abs(pearson_loss(x, x).item()) < 1e-5


def test_pearson_near_one_for_independent_noise():
    a, b = torch.randn(2, 1, 32, 32, 32), torch.randn(2, 1, 32, 32, 32)
    assert abs(pearson_loss(a, b).item() - 1.0) < 0.02  # |r| ~ 1/sqrt(32768) ≈ 0.006


def test_pearson_equals_one_minus_corrcoef_mean_over_batch(rng):
    fixed = rng.standard_normal((3, 1, *SHAPE))
    warped = fixed * np.array([1.0, 0.5, -0.2]).reshape(3, 1, 1, 1, 1) + rng.standard_normal((3, 1, *SHAPE))
    expected = np.mean([1 - np.corrcoef(f.ravel(), w.ravel())[0, 1] for f, w in zip(fixed, warped)])
    ours = pearson_loss(torch.tensor(fixed), torch.tensor(warped)).item()
    assert ours == pytest.approx(expected, abs=1e-5)


def test_pearson_invariant_to_affine_intensity_change():
    x = torch.randn(1, 1, *SHAPE)
    assert abs(pearson_loss(x, 3.0 * x + 7.0).item()) < 1e-5


def test_local_ncc_properties():
    x = torch.randn(1, 1, *SHAPE)
    assert abs(local_ncc_loss(x, x).item()) < 1e-3
    assert abs(local_ncc_loss(x, 2.0 * x + 5.0).item()) < 1e-3  # each window is affinely related
    assert local_ncc_loss(x, -x).item() == pytest.approx(2.0, abs=1e-3)  # signed correlation
    noise = torch.randn(1, 1, 24, 24, 24)
    assert abs(local_ncc_loss(noise, torch.randn_like(noise)).item() - 1.0) < 0.05
    with pytest.raises(ValueError, match="odd"):
        local_ncc_loss(x, x, window=4)


def test_local_ncc_matches_brute_force_at_interior_voxels(rng):
    fixed, warped = rng.standard_normal((1, 1, 11, 11, 11)), rng.standard_normal((1, 1, 11, 11, 11))
    warped = 0.6 * fixed + warped
    # With window 3 every voxel of an 11³ image has a (possibly truncated) window; compute all by brute force.
    values = []
    for i, j, k in np.ndindex(11, 11, 11):
        box = tuple(slice(max(c - 1, 0), c + 2) for c in (i, j, k))
        f, w = fixed[0, 0][box].ravel(), warped[0, 0][box].ravel()
        f, w = f - f.mean(), w - w.mean()
        ncc = (f * w).mean() / np.sqrt(((f * f).mean() + 1e-6) * ((w * w).mean() + 1e-6))
        values.append(np.clip(ncc, -1, 1) if (f * f).mean() > 1e-4 else 0.0)
    ours = local_ncc_loss(torch.tensor(fixed), torch.tensor(warped), window=3).item()
    assert ours == pytest.approx(1 - np.mean(values), abs=1e-5)


def test_mse_matches_numpy(rng):
    a, b = rng.standard_normal((2, 1, *SHAPE)), rng.standard_normal((2, 1, *SHAPE))
    assert mse_loss(torch.tensor(a), torch.tensor(b)).item() == pytest.approx(np.mean((a - b) ** 2), rel=1e-6)


def test_smoothness_of_linear_field_is_analytic(rng):
    """u_c(x) = Σ_d G[c, d]·x_d: forward differences along axis d are G[:, d] at (n_d − 1)/n_d of the voxels."""
    gradient = rng.standard_normal((3, 3))
    x = np.indices(SHAPE).astype(float)
    flow = np.einsum("cd,d...->c...", gradient, x)
    n = np.prod(SHAPE)
    expected = sum(0.5 * (gradient[:, d] ** 2).sum() * n * (SHAPE[d] - 1) / SHAPE[d] for d in range(3)) / (n * 3)
    ours = smoothness_loss(torch.tensor(np.stack([flow, 2 * flow])))  # batch of 2: mean of E and 4E
    assert ours.item() == pytest.approx(2.5 * expected, rel=1e-10)
    assert smoothness_loss(torch.full((1, 3, *SHAPE), 4.2)).item() == 0.0  # constant field


def test_affine_losses_zero_at_identity():
    eye = torch.eye(3).expand(2, 3, 3)
    assert affine_determinant_loss(eye).item() == pytest.approx(0.0, abs=1e-7)
    assert affine_orthogonality_loss(eye).item() == pytest.approx(0.0, abs=1e-6)  # 3ε²/(1+ε) from ε


def test_affine_losses_on_rotation_and_scaling():
    c, s = np.cos(0.7), np.sin(0.7)
    rotation = torch.tensor([[[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]])
    assert affine_determinant_loss(rotation).item() == pytest.approx(0.0, abs=1e-6)
    assert affine_orthogonality_loss(rotation).item() == pytest.approx(0.0, abs=1e-5)
    scaling = torch.diag(torch.tensor([1.2, 1.0, 1.0]))[None]
    assert affine_determinant_loss(scaling).item() == pytest.approx(0.5 * 0.2 ** 2, rel=1e-5)
    assert affine_orthogonality_loss(scaling).item() > 0.01


def test_affine_losses_match_numpy(rng):
    matrices = np.eye(3) + 0.3 * rng.standard_normal((4, 3, 3))
    det_expected = np.mean([0.5 * (np.linalg.det(a) - 1) ** 2 for a in matrices])
    ortho_expected = np.mean(
        [np.sum(lam + 1 / lam) - 6 for lam in (np.linalg.eigvals(a.T @ a + 1e-5 * np.eye(3)).real for a in matrices)]
    )
    a = torch.tensor(matrices, dtype=torch.float64)
    assert affine_determinant_loss(a).item() == pytest.approx(det_expected, rel=1e-5)
    assert affine_orthogonality_loss(a).item() == pytest.approx(ortho_expected, rel=1e-4)
    assert ortho_expected > 0


def test_affine_orthogonality_gradient_finite_at_identity():
    eye = torch.eye(3)[None].clone().requires_grad_(True)
    affine_orthogonality_loss(eye).backward()
    assert torch.isfinite(eye.grad).all()


def one_hot(labels: np.ndarray, n: int) -> torch.Tensor:
    return torch.tensor(np.stack([labels == c for c in range(n)])[None], dtype=torch.float32)


def test_dice_loss_matches_numpy_dice(rng):
    a, b = rng.integers(0, 3, SHAPE), rng.integers(0, 3, SHAPE)
    dices = [2 * np.sum((a == c) & (b == c)) / (np.sum(a == c) + np.sum(b == c)) for c in range(3)]
    assert dice_loss(one_hot(a, 3), one_hot(b, 3)).item() == pytest.approx(1 - np.mean(dices), abs=1e-6)
    assert dice_loss(one_hot(a, 3), one_hot(a, 3)).item() == pytest.approx(0.0, abs=1e-6)
    disjoint = one_hot(np.zeros(SHAPE, int), 2), one_hot(np.ones(SHAPE, int), 2)
    assert dice_loss(*disjoint).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        dice_loss(one_hot(a, 3), one_hot(b, 2))


def test_registration_loss_ncc_window_reaches_local_ncc():
    """The training loss's local NCC uses its ``ncc_window`` (compared with local_ncc_loss called directly)."""
    from types import SimpleNamespace

    from rcreg.losses import RegistrationLoss, local_ncc_loss

    gen = torch.Generator().manual_seed(0)
    fixed, warped = torch.rand(1, 1, 12, 12, 12, generator=gen), torch.rand(1, 1, 12, 12, 12, generator=gen)
    output = SimpleNamespace(warped=warped, stage_flows=[], affine=None)
    for window in (3, 7):
        _, terms = RegistrationLoss("ncc", ncc_window=window)(output, fixed)
        assert terms["similarity"] == pytest.approx(float(local_ncc_loss(fixed, warped, window)), abs=1e-6)
    assert RegistrationLoss("ncc", ncc_window=3)(output, fixed)[1] != RegistrationLoss("ncc", ncc_window=7)(output, fixed)[1]
    with pytest.raises(ValueError, match="odd"):
        RegistrationLoss("ncc", ncc_window=4)


def test_field_loss_is_the_weighted_mean_endpoint_error(rng):
    target = torch.from_numpy(rng.normal(size=(3, 3, 4, 5, 6))).float()
    offset = torch.tensor([3.0, 4.0, 0.0]).view(1, 3, 1, 1, 1)
    flow = target + offset  # every voxel 5 voxels off in the first two pairs ...
    flow[2] = target[2] + 100.0  # ... and far off in the third, whose field is unknown
    weights = torch.ones(3, 1, 4, 5, 6)
    weights[2] = 0.0
    assert float(field_loss(flow, target, weights)) == pytest.approx(5.0, rel=1e-5)
    weights = torch.from_numpy(rng.uniform(size=(3, 1, 4, 5, 6))).float()
    error = np.sqrt(((flow - target).numpy() ** 2).sum(axis=1, keepdims=True))  # numpy reference
    expected = (error * weights.numpy()).sum() / weights.numpy().sum()
    assert float(field_loss(flow, target, weights)) == pytest.approx(expected, rel=1e-5)
    flow.requires_grad_(True)
    none = field_loss(flow, target, torch.zeros(3, 1, 4, 5, 6))
    none.backward()  # no known field: zero, still connected to the graph
    assert float(none) == 0.0 and flow.grad is not None and float(flow.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="weights"):
        field_loss(flow, target, torch.ones(3))


def test_registration_loss_adds_the_weighted_field_term():
    from rcreg.cascade import CascadeOutput

    flow = torch.zeros(1, 3, 6, 6, 6)
    flow[:, 0] = 2.0
    image = torch.rand(1, 1, 6, 6, 6)
    output = CascadeOutput(flow=flow, warped=image, stage_flows=[flow])
    plain, _ = RegistrationLoss(similarity="mse")(output, image)
    total, terms = RegistrationLoss(similarity="mse", field_weight=0.5)(
        output, image, known_flow=torch.zeros_like(flow), known_weights=torch.ones(1, 1, 6, 6, 6))
    assert terms["field"] == pytest.approx(2.0, rel=1e-5)
    assert float(total) == pytest.approx(float(plain) + 1.0, rel=1e-5)
    with pytest.raises(ValueError, match="known_flow"):
        RegistrationLoss(field_weight=0.5)(output, image)
