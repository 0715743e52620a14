"""Model resolution: installed models, checkpoint files, networks, predictors; cascades and repeats."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import rcreg.models as models
from rcreg import RecursiveCascadeNetwork, save_checkpoint
from rcreg.checkpoint import CheckpointError
from rcreg.cli import main
from rcreg.models import DEFAULT_CARD, list_models, resolve_model, select_device
from rcreg.spatial import centered_grid, identity_grid


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A models folder with a CT and an MR model."""
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    for name, modality in (("ct-small", "CT"), ("mr-small", "MR")):
        card = {"modality": modality, "grid": {"shape": [16, 16, 16]}, "description": f"{modality} test model"}
        save_checkpoint(tmp_path / f"{name}.pt", RecursiveCascadeNetwork("vtn", n_cascades=1, width=0.125), card)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    return tmp_path


def test_list_and_choose_installed_models(installed, capsys):
    listed = dict(list_models())
    assert sorted(listed) == ["ct-small", "mr-small"]  # the unreadable file is skipped
    assert listed["ct-small"]["normalization"] == DEFAULT_CARD["normalization"]  # completed from the default
    assert resolve_model(None, modality="MR").name == "mr-small"
    assert resolve_model("ct-small").card["modality"] == "CT"
    with pytest.raises(ValueError, match="several models"):
        resolve_model(None)
    assert main(["models"]) == 0
    assert "mr-small:" in capsys.readouterr().out


def test_default_model_follows_the_fixed_image_modality(installed):
    """Without --model, a CT-like fixed image (air at −1000 HU) picks the CT model, any other (a plain MR
    NIfTI/NRRD, no tag) the MR model; a DICOM tag wins."""
    import numpy as np
    import SimpleITK as sitk

    from rcreg.registration import image_modality

    ct = np.full((12, 12, 12), -1000.0, dtype=np.float32)
    ct[3:9, 3:9, 3:9] = 40.0
    mr = np.abs(np.random.default_rng(0).normal(300.0, 80.0, (12, 12, 12))).astype(np.float32)
    assert image_modality(sitk.GetImageFromArray(ct)) == "CT"
    assert image_modality(sitk.GetImageFromArray(mr)) == "MR"
    assert resolve_model(None, modality=image_modality(sitk.GetImageFromArray(mr))).name == "mr-small"
    tagged = sitk.GetImageFromArray(ct)
    tagged.SetMetaData("0008|0060", "MR")
    assert image_modality(tagged) == "MR"
    assert resolve_model(None, modality=image_modality(sitk.GetImageFromArray(ct))).name == "ct-small"
    assert resolve_model(None, modality=image_modality(tagged)).name == "mr-small"


def test_no_model_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    with pytest.raises(ValueError, match="no registration model is installed"):
        resolve_model(None)
    with pytest.raises(CheckpointError, match="unknown model 'nope'"):
        resolve_model("nope")


def test_checkpoint_network_and_predictor(tmp_path):
    net = RecursiveCascadeNetwork("voxelmorph", n_cascades=2, affine=False, width=0.25)
    save_checkpoint(tmp_path / "vm.pt", net, {"grid": {"shape": [8, 8, 8]}})
    from_file = resolve_model(tmp_path / "vm.pt")
    assert from_file.name == "vm" and from_file.card["grid"]["shape"] == [8, 8, 8]
    fixed, moving = torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)
    torch.testing.assert_close(from_file.predict(fixed, moving), net.eval()(fixed, moving).flow)
    assert resolve_model(net).card == {**DEFAULT_CARD, "name": "network"}

    def shift(f, m):
        return torch.ones(1, 3, *f.shape[2:])

    predictor = resolve_model(shift)
    assert predictor.name == "shift"
    assert torch.equal(predictor.predict(fixed, moving), torch.ones(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="plain predictor"):
        predictor.predict(fixed, moving, repeat=2)
    with pytest.raises(ValueError, match="plain predictor"):
        predictor.predict(fixed, moving, amp=True)
    with pytest.raises(ValueError, match="returned a flow of shape"):
        resolve_model(lambda f, m: torch.zeros(1, 3, 4, 4, 4)).predict(fixed, moving)


def test_symmetric_prediction_averages_the_forward_flow_and_the_reverse_flows_inverse():
    """A predictor that returns the same flow whatever the order (a bias) gets cancelled: the mean of u and
    u's inverse is second order in u; an inverse-consistent predictor (translation by the difference of the
    image means, which changes sign with the order) is left as it is."""
    fixed, moving = torch.zeros(1, 1, 12, 14, 10), torch.ones(1, 1, 12, 14, 10)
    x = torch.linspace(0, 1, 12).view(1, 1, 12, 1, 1).expand(1, 3, 12, 14, 10)

    def biased(f, m):
        return 0.2 * torch.sin(3 * x)

    def consistent(f, m):
        return torch.full((1, 3, *f.shape[2:]), 0.7) * float(m.mean() - f.mean())

    ticks = []
    symmetric = resolve_model(biased).predict(fixed, moving, symmetric=True, callback=lambda d, t: ticks.append((d, t)))
    assert ticks == [(1, 2), (2, 2)]
    assert symmetric.abs().max() < 0.1 * biased(fixed, moving).abs().max()
    torch.testing.assert_close(resolve_model(consistent).predict(fixed, moving, symmetric=True),
                               consistent(fixed, moving), atol=1e-5, rtol=0)


def test_flip_average_keeps_a_mirror_equivariant_prediction_and_runs_every_view():
    """A predictor whose answer mirrors with its input (a translation by the difference of the images' centroids
    plus a scaling about the grid centre) comes back unchanged from the flip average: a wrong sign or a missing
    spatial mirror would change it. Each view runs once per direction."""
    rng = np.random.default_rng(0)
    fixed, moving = (torch.from_numpy(rng.random((1, 1, 12, 14, 10))).float() ** 4 for _ in range(2))
    centred = centered_grid((12, 14, 10))[None]
    seen = []

    def equivariant(f, m):
        seen.append(f)
        centroid = lambda image: (identity_grid(image.shape[2:]) * image[0]).sum((1, 2, 3)) / image.sum()
        return (centroid(m) - centroid(f)).view(1, 3, 1, 1, 1) + 0.05 * centred

    model = resolve_model(equivariant)
    plain = model.predict(fixed, moving)
    ticks = []
    averaged = model.predict(fixed, moving, flip_average=True, callback=lambda d, t: ticks.append((d, t)))
    torch.testing.assert_close(averaged, plain, atol=1e-5, rtol=0)
    assert ticks == [(1, 4), (2, 4), (3, 4), (4, 4)]
    torch.testing.assert_close(seen[3], torch.flip(fixed, [3]))  # after the plain call: as it is, X, then Y
    seen.clear()
    model.predict(fixed, moving, flip_average=True, symmetric=True)
    assert len(seen) == 8
    constant = resolve_model(lambda f, m: torch.ones(1, 3, *f.shape[2:]))  # not equivariant: each axis's own view
    torch.testing.assert_close(constant.predict(fixed, moving, flip_average=True),  # negates it: (3 − 1) / 4
                               torch.full((1, 3, 12, 14, 10), 0.5))


def test_cascades_and_repeat_select_stages():
    net = RecursiveCascadeNetwork("vtn", n_cascades=3, width=0.125).eval()
    model = resolve_model(net)
    fixed, moving = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        full = net(fixed, moving)
        counted = []
        one = model.predict(fixed, moving, cascades=1, repeat=2, callback=lambda d, t: counted.append((d, t)))
    assert counted[-1] == (3, 3)  # affine + 1 cascade × 2 repeats
    torch.testing.assert_close(model.predict(fixed, moving), full.flow)
    assert not torch.allclose(one, full.flow, atol=1e-4)
    with pytest.raises(ValueError, match="--cascades must be 0…3"):
        model.predict(fixed, moving, cascades=4)


def test_select_device():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            select_device("cuda")


def test_models_listing_prints_unicode_as_text(installed, capsys):
    save_checkpoint(installed / "unicode.pt", RecursiveCascadeNetwork("vtn", n_cascades=1, width=0.125),
                    {"description": "window −1000…400 HU, 64³ grid"})
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "window −1000…400 HU, 64³ grid" in out and "\\u" not in out


def test_closed_pipe_stops_quietly():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time, rcreg.cli; time.sleep(1); "
                             "raise SystemExit(rcreg.cli.main(['data', 'list']))"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `rcreg data list | head -0`: the reader is gone before anything is written
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == b"", err


def test_training_steps_add_up_the_fine_tuning_lineage():
    from rcreg.models import training_steps

    stage1 = {"iterations": 8000}
    stage2 = {"iterations": 6000, "init": {"source": "stage1.pt", "training": stage1}}
    card = {"training": {"iterations": 500, "init": {"source": "stage2.pt", "training": stage2}}}
    assert training_steps(card) == 14500
    assert training_steps({"training": stage1}) == 8000 and training_steps({}) == 0


def _ct_cylinder(diameter_mm: float) -> "sitk.Image":
    """A CT-like volume: air (−1000 HU) around a water cylinder (0 HU) of ``diameter_mm``, axis along z, 2 mm voxels."""
    import numpy as np
    import SimpleITK as sitk

    n = 256
    x = (np.arange(n) - (n - 1) / 2) * 2.0
    inside = (x[None, :] ** 2 + x[:, None] ** 2) <= (diameter_mm / 2) ** 2
    array = np.where(inside[None], 0.0, -1000.0).repeat(20, axis=0).astype(np.float32)  # (K, J, I)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([2.0, 2.0, 2.0])
    return image


def test_region_picks_the_model_and_a_head_ct_never_gets_a_body_model(installed, monkeypatch):
    """An 18 cm wide CT is a head, a 35 cm one a body; with only a body CT model installed, a head CT is
    registered by refinement alone (with a warning), a body CT by the body model."""
    import warnings

    from rcreg.options import NO_MODEL
    from rcreg.registration import image_region, register

    assert image_region(_ct_cylinder(180.0), "CT") == "head"
    assert image_region(_ct_cylinder(350.0), "CT") == "body"
    assert image_region(_ct_cylinder(180.0), "MR") is None
    assert models.default_model("CT", "head") == "ct-small"  # its card names no region: fits any
    card = {"modality": "CT", "region": "body", "grid": {"shape": [16, 16, 16]}}
    save_checkpoint(installed / "ct-small.pt", RecursiveCascadeNetwork("vtn", n_cascades=1, width=0.125), card)
    assert models.default_model("CT", "body") == "ct-small" and models.default_model("CT", None) == "ct-small"
    assert models.default_model("CT", "head") == NO_MODEL
    assert models.default_model("MR", "head") == "mr-small"
    with pytest.warns(UserWarning, match="no installed model is for head CT images"):
        head = register(_ct_cylinder(180.0), _ct_cylinder(180.0), refine=1)
    assert head.metrics["model"] == NO_MODEL
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert register(_ct_cylinder(350.0), _ct_cylinder(350.0), refine=0).metrics["model"] == "ct-small"


def test_cli_prints_a_warning_as_one_line(installed, tmp_path, capsys):
    """`rcreg register` on a head CT with only a body CT model installed: one warning line, then success."""
    import SimpleITK as sitk

    from rcreg.cli import main

    card = {"modality": "CT", "region": "body", "grid": {"shape": [16, 16, 16]}}
    save_checkpoint(installed / "ct-small.pt", RecursiveCascadeNetwork("vtn", n_cascades=1, width=0.125), card)
    sitk.WriteImage(_ct_cylinder(180.0), str(tmp_path / "head.nii.gz"))
    assert main(["register", "-m", str(tmp_path / "head.nii.gz"), "-f", str(tmp_path / "head.nii.gz"),
                 "-o", str(tmp_path / "out"), "--refine", "1", "-q", "--no-figure"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rcreg register: warning: no installed model is for head CT images: registering by refinement "
                   "alone (give --model to choose one)"]
