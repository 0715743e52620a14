"""The recursive cascade with its training loss: gradient flow, weight sharing, odd sizes, memory options."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from rcreg import RecursiveCascadeNetwork, RegistrationLoss
from rcreg import losses
from rcreg.losses import affine_determinant_loss, affine_orthogonality_loss, pearson_loss, smoothness_loss

WIDTH = 0.125  # narrow networks keep the tests fast; the architecture is unchanged


def image_pair(shape=(32, 32, 32), seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two smooth random images in [0, 1], ``(1, 1, *shape)``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        img = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
        img = (img - img.min()) / (img.max() - img.min())
        out.append(torch.tensor(img, dtype=torch.float32)[None, None])
    return out[0], out[1]


def grads_by_cascade(model: RecursiveCascadeNetwork) -> list[list[torch.Tensor]]:
    modules = ([model.affine] if model.affine is not None else []) + list(model.cascades)
    return [[p.grad for p in m.parameters()] for m in modules]


def test_loss_terms_and_weights_follow_the_paper():
    fixed, moving = image_pair()
    model = RecursiveCascadeNetwork("vtn", n_cascades=2, affine=True, width=WIDTH)
    out = model(fixed, moving)
    total, terms = RegistrationLoss()(out, fixed)
    expected_terms = {
        "similarity": pearson_loss(fixed, out.warped),
        "smoothness": sum(smoothness_loss(f) for f in out.stage_flows),
        "det": affine_determinant_loss(out.affine[0]),
        "ortho": affine_orthogonality_loss(out.affine[0]),
    }
    for name, value in expected_terms.items():
        assert terms[name] == pytest.approx(value.item(), rel=1e-5)
    expected_total = (expected_terms["similarity"] + 1.0 * expected_terms["smoothness"]
                      + 0.1 * expected_terms["det"] + 0.1 * expected_terms["ortho"])
    assert total.item() == pytest.approx(expected_total.item(), rel=1e-5)
    assert terms["total"] == pytest.approx(total.item())
    assert terms["smoothness"] > 0  # the random-init VTN outputs a non-trivial flow


def test_loss_without_affine_and_with_dice():
    fixed, moving = image_pair((16, 16, 16))
    out = RecursiveCascadeNetwork("voxelmorph", n_cascades=1, affine=False, width=WIDTH)(fixed, moving)
    labels = torch.rand(1, 2, 16, 16, 16)
    _, terms = RegistrationLoss(similarity="mse", dice_weight=1.0)(out, fixed, labels, labels)
    assert set(terms) == {"similarity", "smoothness", "dice", "total"}
    with pytest.raises(ValueError, match="warped_labels"):
        RegistrationLoss(dice_weight=1.0)(out, fixed)
    with pytest.raises(ValueError, match="unknown similarity"):
        RegistrationLoss(similarity="mutual-information")


def test_backward_reaches_every_cascade_and_similarity_scores_final_warp_only(monkeypatch):
    calls = []

    def spy(fixed, warped):
        calls.append(warped)
        return pearson_loss(fixed, warped)

    monkeypatch.setitem(losses.SIMILARITY_LOSSES, "pearson", spy)
    fixed, moving = image_pair()
    model = RecursiveCascadeNetwork("vtn", n_cascades=2, affine=True, width=WIDTH)
    out = model(fixed, moving)
    total, _ = RegistrationLoss("pearson")(out, fixed)
    total.backward()
    assert len(calls) == 1 and calls[0] is out.warped
    grads = grads_by_cascade(model)
    assert len(grads) == 3
    for cascade in grads:
        assert all(g is not None for g in cascade)
        assert any(g.abs().sum() > 0 for g in cascade)


def test_similarity_gradient_alone_reaches_the_affine_cascade():
    """The affine cascade has no similarity term of its own: it learns only through the final warp."""
    fixed, moving = image_pair()
    model = RecursiveCascadeNetwork("vtn", n_cascades=1, affine=True, width=WIDTH)
    pearson_loss(fixed, model(fixed, moving).warped).backward()
    assert model.affine.head.weight.grad.abs().sum() > 0


def test_repeat_reuses_the_trained_cascades():
    fixed, moving = image_pair((24, 24, 24))
    model = RecursiveCascadeNetwork("vtn", n_cascades=2, affine=True, width=WIDTH)
    n_params = sum(p.numel() for p in model.parameters())
    keys = set(model.state_dict())
    counts = [0] * model.n_cascades
    for index, net in enumerate(model.cascades):
        net.register_forward_hook(lambda *_, index=index: counts.__setitem__(index, counts[index] + 1))
    with torch.no_grad():
        once = model(fixed, moving, repeat=1)
        counts[:] = [0, 0]
        thrice = model(fixed, moving, repeat=3)
    assert counts == [3, 3]  # every cascade applied r times, no other module created
    assert len(thrice.stage_flows) == 2 * 3 and len(once.stage_flows) == 2
    assert sum(p.numel() for p in model.parameters()) == n_params and set(model.state_dict()) == keys
    # The first application is the same network on the same input; later ones see a different warp.
    torch.testing.assert_close(thrice.stage_flows[0], once.stage_flows[0])
    assert not torch.allclose(thrice.flow, once.flow)


@pytest.mark.parametrize("base", ["vtn", "voxelmorph"])
def test_odd_sizes_run(base):
    shape = (80, 96, 72)
    fixed, moving = image_pair(shape)
    model = RecursiveCascadeNetwork(base, n_cascades=2, affine=True, width=WIDTH)
    out = model(fixed, moving)
    assert out.flow.shape == (1, 3, *shape) and out.warped.shape == (1, 1, *shape)
    assert all(f.shape == (1, 3, *shape) for f in out.stage_flows)
    total, _ = RegistrationLoss()(out, fixed)
    total.backward()
    assert torch.isfinite(out.flow).all() and np.isfinite(total.item())


def paired_models(**options) -> tuple[RecursiveCascadeNetwork, RecursiveCascadeNetwork]:
    """A plain fp32 model and one with ``options``, sharing the same weights."""
    plain = RecursiveCascadeNetwork("vtn", n_cascades=2, affine=True, width=WIDTH)
    other = RecursiveCascadeNetwork("vtn", n_cascades=2, affine=True, width=WIDTH, **options)
    other.load_state_dict(plain.state_dict())
    return plain, other


def test_checkpointing_gives_the_same_gradients():
    fixed, moving = image_pair()
    plain, checkpointed = paired_models(checkpointing=True)
    for model in (plain, checkpointed):
        RegistrationLoss()(model(fixed, moving), fixed)[0].backward()
    for a, b in zip(grads_by_cascade(plain), grads_by_cascade(checkpointed)):
        for ga, gb in zip(a, b):
            torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-7)


def test_amp_channels_last_close_to_fp32():
    fixed, moving = image_pair()
    plain, fast = paired_models(amp=True, channels_last=True)
    with torch.no_grad():
        ref, out = plain(fixed, moving), fast(fixed, moving)
    assert out.flow.dtype == torch.float32 and out.warped.dtype == torch.float32
    # bf16 keeps ~3 significant digits per operation; through a few dozen layers a few % remain.
    rel = (out.flow - ref.flow).norm() / ref.flow.norm()
    assert rel < 0.05, f"relative flow difference {rel:.3f}"
    assert (out.warped - ref.warped).abs().max() < 0.05


def test_affine_similarity_scores_the_affine_warp_alone_and_trains_the_affine_cascade():
    from rcreg.cascade import CascadeOutput

    fixed, _ = image_pair()
    moving = torch.tensor(ndimage.shift(fixed[0, 0].numpy(), (-3, 0, 0), order=1, mode="nearest"))[None, None]
    # moving(p) = fixed(p + 3 x̂): the affine pull-back p ↦ p − 3 x̂ (b = (−3, 0, 0) voxels) aligns it.
    shift = torch.tensor([[-3.0, 0.0, 0.0]], requires_grad=True)
    matrix = torch.eye(3)[None].requires_grad_(True)
    rest = CascadeOutput(flow=torch.zeros(1, 3, 32, 32, 32), warped=fixed.clone(), affine=(matrix, shift))
    loss = RegistrationLoss(affine_similarity_weight=0.5)
    total, terms = loss(rest, fixed, moving=moving)
    scores = {}
    for b in (0.0, 3.0):
        other = CascadeOutput(flow=rest.flow, warped=rest.warped, affine=(torch.eye(3)[None], torch.tensor([[b, 0.0, 0.0]])))
        scores[b] = loss(other, fixed, moving=moving)[1]["affine_similarity"]
    # b = 0: the affine warp is the moving image itself; the aligning shift scores far better than no
    # shift (not 0: the 3 border slices clamp), the opposite shift worse.
    assert scores[0.0] == pytest.approx(float(pearson_loss(fixed, moving)), abs=1e-5)
    assert terms["affine_similarity"] < 0.1 * scores[0.0] < scores[3.0]
    assert total.item() == pytest.approx(terms["similarity"] + 0.5 * terms["affine_similarity"] +
                                         0.1 * (terms["det"] + terms["ortho"]), abs=1e-6)
    total.backward()
    assert shift.grad is not None and matrix.grad is not None
    assert "affine_similarity" not in RegistrationLoss()(rest, fixed)[1]  # off by default (the paper)
    with pytest.raises(ValueError, match="needs the moving image"):
        loss(rest, fixed)


class _Smoothed(torch.nn.Module):
    """A base network whose output flow is smoothed by three box filters of width 2r + 1 (≈ Gaussian, σ ≈ r):
    the smooth fields a trained network gives, from random weights."""

    def __init__(self, net: torch.nn.Module, radius: int = 3):
        super().__init__()
        self.net, self.radius = net, radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flow = self.net(x)
        for _ in range(3):
            flow = torch.nn.functional.avg_pool3d(
                torch.nn.functional.pad(flow, [self.radius] * 6, mode="replicate"), 2 * self.radius + 1, stride=1)
        return flow


@pytest.mark.parametrize("seed", [0, 1])
def test_diffeomorphic_cascades_do_not_fold_where_plain_ones_do(seed):
    from rcreg.spatial import jacobian_determinant

    torch.manual_seed(seed)
    fixed, moving = image_pair(seed=seed)
    plain = RecursiveCascadeNetwork("vtn", n_cascades=3, affine=False, width=WIDTH)
    diffeo = RecursiveCascadeNetwork("vtn", n_cascades=3, affine=False, width=WIDTH, diffeomorphic=True)
    diffeo.load_state_dict(plain.state_dict())  # the option adds no weights
    for model in (plain, diffeo):
        model.cascades = torch.nn.ModuleList(_Smoothed(net) for net in model.cascades)
    with torch.no_grad():
        largest = plain.cascades[0](torch.cat([fixed, moving], 1)).abs().max() / plain.n_cascades
        for model in (plain, diffeo):  # weights scaled up: each cascade's own (scaled) output reaches 7 voxels
            for net in model.cascades:
                net.net.flow_scale *= 7.0 / float(largest)
        out_plain, out_diffeo = plain(fixed, moving), diffeo(fixed, moving)
    assert out_plain.stage_flows[0].abs().max() == pytest.approx(7.0, rel=1e-3)
    assert (jacobian_determinant(out_plain.flow) <= 0).float().mean() > 1e-3  # displacements this large fold
    assert jacobian_determinant(out_diffeo.flow).min() > 0
    # each cascade's own flow is the exponential of its output, not the output itself
    assert out_diffeo.flow.abs().max() > 1.0 and not torch.allclose(out_diffeo.stage_flows[0], out_plain.stage_flows[0])
    for f in out_diffeo.stage_flows:
        assert jacobian_determinant(f).min() > 0


def test_diffeomorphic_option_is_stored_and_old_checkpoints_load(tmp_path):
    from rcreg.checkpoint import model_from_checkpoint, save_checkpoint

    model = RecursiveCascadeNetwork("vtn", n_cascades=1, affine=True, width=WIDTH, diffeomorphic=True)
    save_checkpoint(tmp_path / "diffeo.pt", model, {})
    loaded, _ = model_from_checkpoint(tmp_path / "diffeo.pt")
    assert loaded.diffeomorphic and loaded.config == model.config
    old = torch.load(tmp_path / "diffeo.pt", weights_only=True)
    for key in ("diffeomorphic", "affine_levels", "affine_translation"):  # a file written before these options
        del old["model"][key]
    torch.save(old, tmp_path / "old.pt")
    loaded, _ = model_from_checkpoint(tmp_path / "old.pt")
    assert not loaded.diffeomorphic and loaded.config == RecursiveCascadeNetwork.architecture(old["model"])
    assert loaded.config == dict(model.config, diffeomorphic=False)


def test_old_checkpoint_keyword_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="checkpointing"):
        model = RecursiveCascadeNetwork("vtn", n_cascades=1, affine=False, width=WIDTH, checkpoint=True)
    assert model.checkpointing
