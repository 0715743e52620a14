"""The affine network's depth and translation unit, and old checkpoints that predate those options."""
from __future__ import annotations

import pytest
import torch

from rcreg import RecursiveCascadeNetwork, save_checkpoint
from rcreg.checkpoint import load_checkpoint, model_from_checkpoint
from rcreg.networks import AffineNetwork


@pytest.mark.parametrize("levels,shape,coarsest", [(6, (64, 64, 64), 1), (5, (64, 64, 64), 2), (5, (48, 40, 33), 2)])
def test_head_reads_the_last_level(levels, shape, coarsest):
    net = AffineNetwork(width=0.125, levels=levels)
    features = net.encoder(torch.rand(1, 2, *shape))
    assert len(features) == levels and max(features[-1].shape[2:]) == coarsest
    assert net.head.in_features == net.encoder.channels[-1] * 8
    matrix, shift = net(torch.rand(1, 2, *shape))
    torch.testing.assert_close(matrix, torch.eye(3)[None])  # the zero-initialised head starts at the identity
    torch.testing.assert_close(shift, torch.zeros(1, 3))


def test_extent_translation_is_in_half_grid_extents():
    net = AffineNetwork(width=0.125, levels=5, translation="extent")
    with torch.no_grad():
        net.head.bias[9:] = torch.tensor([1.0, -0.5, 0.25])
    _, shift = net(torch.rand(1, 2, 33, 17, 65))
    torch.testing.assert_close(shift, torch.tensor([[16.0, -4.0, 8.0]]))  # (n − 1)/2 voxels per unit
    with pytest.raises(ValueError, match="translation"):
        AffineNetwork(translation="mm")


def test_checkpoint_without_affine_options_loads_as_the_papers_affine(tmp_path):
    model = RecursiveCascadeNetwork("vtn", 1, True, 0.125)
    save_checkpoint(tmp_path / "old.pt", model, {})
    raw = torch.load(tmp_path / "old.pt", weights_only=True)
    for key in ("affine_levels", "affine_translation"):
        del raw["model"][key]  # as written before the options existed
    torch.save(raw, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["model"]["affine_levels"] == 6
    loaded, _ = model_from_checkpoint(tmp_path / "old.pt")
    assert loaded.config == model.config and loaded.affine.translation == "voxels"
