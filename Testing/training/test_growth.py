"""Growing a trained cascade without changing its flow: widening (rcreg.training.widening), deepening
(rcreg.training.deepening), Training/grow_checkpoint.py, and level widths."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rcreg import RecursiveCascadeNetwork, save_checkpoint
from rcreg.checkpoint import load_checkpoint, model_from_checkpoint
from rcreg.models import training_steps
from rcreg.training.config import ConfigError, TrainConfig
from rcreg.training.trainer import train
from rcreg.training.deepening import deepen_network
from rcreg.training.widening import widen_network

SCRIPT = Path(__file__).resolve().parents[2] / "Training" / "grow_checkpoint.py"
FINE = [0.5, 0.5, 0.5, 0.25, 0.25, 0.25]


def _narrow(seed: int = 0, **options) -> RecursiveCascadeNetwork:
    """A width-0.25 cascade with random weights (the flows of a random VTN are far from zero)."""
    torch.manual_seed(seed)
    return RecursiveCascadeNetwork("vtn", n_cascades=2, width=0.25, affine_levels=4, affine_translation="extent",
                                   **options).eval()


def _pair(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    fixed = torch.rand(1, 1, size, size, size + 4, generator=generator)
    return fixed, torch.roll(fixed, 2, dims=2)


@pytest.mark.parametrize("change", [{"width": 0.5}, {"level_widths": FINE}], ids=["width", "level_widths"])
def test_the_widened_network_computes_the_same_flow(change):
    narrow = _narrow()
    wide = widen_network(narrow, **change)
    assert wide.cascades[0].encoder.channels[0] == 2 * narrow.cascades[0].encoder.channels[0]
    fixed, moving = _pair()
    with torch.no_grad():
        before, after = narrow(fixed, moving), wide(fixed, moving)
    assert before.flow.abs().mean() > 0.1  # a real flow (voxels), not zeros
    torch.testing.assert_close(after.flow, before.flow, atol=1e-4, rtol=0)
    torch.testing.assert_close(after.stage_flows[0], before.stage_flows[0], atol=1e-4, rtol=0)  # first cascade's
    for wide_part, narrow_part in zip(after.affine, before.affine):
        torch.testing.assert_close(wide_part, narrow_part, atol=1e-5, rtol=0)


def test_level_widths_widen_only_the_fine_levels_of_the_deformable_networks():
    wide = widen_network(_narrow(), level_widths=FINE)
    assert wide.cascades[0].encoder.channels == [8, 16, 32, 32, 64, 128]  # 0.25 gives 4, 8, 16, 32, 64, 128
    assert wide.affine.encoder.channels == [4, 8, 16, 32]  # the affine network keeps width 0.25
    assert wide.config["level_widths"] == FINE and wide.config["width"] == 0.25


def test_copies_split_the_weights_unequally_and_then_learn_apart():
    narrow = _narrow()
    equal, unequal = widen_network(narrow, level_widths=FINE, noise=0.0), widen_network(narrow, level_widths=FINE)
    source = narrow.cascades[0].encoder.levels[1][0][0].weight  # level 2 reads level 1's 4 channels, copied to 8
    for wide in (equal, unequal):
        split = wide.cascades[0].encoder.levels[1][0][0].weight  # (16, 8, 3, 3, 3): out channels copied too
        torch.testing.assert_close(split[::2, 0::2] + split[::2, 1::2], source, atol=1e-6, rtol=0)
    split = unequal.cascades[0].encoder.levels[1][0][0].weight
    assert not torch.allclose(split[:, 0::2], split[:, 1::2])  # the noise: copies weigh differently
    fixed, moving = _pair()
    for wide in (equal, unequal):  # one plain gradient step
        wide.train()
        wide(fixed, moving).flow.square().mean().backward()
        with torch.no_grad():
            for p in wide.parameters():
                p -= 1e-3 * p.grad
    first = [w.cascades[0].encoder.levels[0][0][0].weight for w in (equal, unequal)]  # level 1: 4 → 8 copies
    assert torch.allclose(first[0][0::2], first[0][1::2])  # equal splits: the copies stay identical
    assert not torch.allclose(first[1][0::2], first[1][1::2], atol=1e-7)  # unequal: they move apart


def test_widening_refuses_what_it_cannot_preserve():
    with pytest.raises(ValueError, match="whole number of copies"):
        widen_network(_narrow(), width=0.3)  # 4 → 5 channels
    with pytest.raises(ValueError, match="vtn"):
        widen_network(RecursiveCascadeNetwork("voxelmorph", n_cascades=1, width=0.25), width=0.5)
    with pytest.raises(ValueError, match="needs a new width"):
        widen_network(_narrow())
    with pytest.raises(ValueError, match="six positive"):
        RecursiveCascadeNetwork("vtn", n_cascades=1, level_widths=[0.5] * 5)
    with pytest.raises(ValueError, match="vtn base network"):
        RecursiveCascadeNetwork("voxelmorph", n_cascades=1, level_widths=FINE)


def test_level_widths_round_trip_through_a_checkpoint_and_old_ones_still_load(tmp_path):
    wide = widen_network(_narrow(), level_widths=FINE)
    loaded, _ = model_from_checkpoint(save_checkpoint(tmp_path / "wide.pt", wide, {"name": "w"}))
    assert loaded.config == wide.config
    old = save_checkpoint(tmp_path / "old.pt", _narrow(), {"name": "n"})
    stored = torch.load(old, weights_only=True)
    del stored["model"]["level_widths"]  # written before the option existed
    torch.save(stored, old)
    assert model_from_checkpoint(old)[0].config["level_widths"] is None


def test_the_config_checks_level_widths(tiny_config):
    assert tiny_config(level_widths=[0.5, 0.5, 0.25, 0.25, 0.25, 0.25]).check().model_kwargs()["level_widths"] == \
        [0.5, 0.5, 0.25, 0.25, 0.25, 0.25]
    with pytest.raises(ConfigError, match="level_widths"):
        tiny_config(level_widths=[0.5, 0.5]).check()
    with pytest.raises(ConfigError, match="level_widths"):
        tiny_config(level_widths=FINE, base="voxelmorph").check()
    assert TrainConfig().level_widths is None


def test_script_widens_a_trained_run_that_then_fine_tunes(tiny_config, tmp_path):
    first = train(tiny_config(output=str(tmp_path / "first"), iterations=2))
    out = tmp_path / "wide.pt"
    done = subprocess.run([sys.executable, str(SCRIPT), str(first.last), "--level-widths", *map(str, FINE),
                           "-o", str(out)], capture_output=True, encoding="utf-8", check=False)
    assert done.returncode == 0, done.stderr
    card = load_checkpoint(out)["card"]
    assert card["level_widths"] == FINE and card["training"]["widened"]["from"] == {"width": 0.25, "level_widths": None}
    tuned = train(tiny_config(output=str(tmp_path / "tuned"), init=str(out), level_widths=FINE, iterations=2))
    tuned_card = load_checkpoint(tuned.last)["card"]
    assert tuned_card["level_widths"] == FINE and training_steps(tuned_card) == 4  # 2 + the 2 it was widened from
    done = subprocess.run([sys.executable, str(SCRIPT), str(first.last), "--width", "0.3", "-o",
                           str(tmp_path / "bad.pt")], capture_output=True, encoding="utf-8", check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1 and "last.pt" in lines[0] and "whole number" in lines[0]
    assert not (tmp_path / "bad.pt").exists()


@pytest.mark.parametrize("options", [{}, {"diffeomorphic": True}, {"base": "voxelmorph"}],
                         ids=["vtn", "diffeomorphic", "voxelmorph"])
def test_the_deepened_network_computes_the_same_flow(options):
    torch.manual_seed(1)
    shallow = RecursiveCascadeNetwork(options.pop("base", "vtn"), n_cascades=2, width=0.25, affine_levels=4,
                                      affine_translation="extent", **options).eval()
    if shallow.config["base"] == "voxelmorph":  # its flow layer starts near zero: make the flows real
        for net in shallow.cascades:
            torch.nn.init.normal_(net.flow.weight, std=0.5)
            torch.nn.init.normal_(net.flow.bias, std=1.0)
    deep = deepen_network(shallow, 4)
    assert deep.n_cascades == 4 and deep.config == {**shallow.config, "n_cascades": 4}
    fixed, moving = _pair()
    with torch.no_grad():
        before, after = shallow(fixed, moving), deep(fixed, moving)
    assert before.flow.abs().mean() > 0.1
    torch.testing.assert_close(after.flow, before.flow, atol=1e-4, rtol=0)
    for old, new in zip(before.stage_flows, after.stage_flows):  # each old cascade's own step, 1/n scale included
        torch.testing.assert_close(new, old, atol=1e-4, rtol=0)
    assert all(float(f.abs().max()) == 0.0 for f in after.stage_flows[2:])  # the new cascades: no flow yet


def test_the_new_cascades_learn():
    deep = deepen_network(_narrow(), 3).train()
    fixed, moving = _pair()
    deep(fixed, moving).flow.square().mean().backward()
    assert float(deep.cascades[2].final.weight.grad.abs().max()) > 0  # a zero output layer still gets a gradient


def test_deepening_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="from 2 to 1"):
        deepen_network(_narrow(), 1)
    with pytest.raises(ValueError, match="at least one deformable"):
        deepen_network(RecursiveCascadeNetwork("vtn", n_cascades=0, width=0.25, affine_levels=4), 2)


def test_script_deepens_a_trained_run_that_then_fine_tunes(tiny_config, tmp_path):
    first = train(tiny_config(output=str(tmp_path / "first"), iterations=2))
    out = tmp_path / "deep.pt"
    done = subprocess.run([sys.executable, str(SCRIPT), str(first.last), "--cascades", "3", "-o", str(out)],
                          capture_output=True, encoding="utf-8", check=False)
    assert done.returncode == 0, done.stderr
    card = load_checkpoint(out)["card"]
    assert card["cascades"] == 3 and card["training"]["deepened"]["from"] == 2  # tiny_config's
    assert "evaluation" not in card and "validation" not in card
    tuned = train(tiny_config(output=str(tmp_path / "tuned"), init=str(out), cascades=3, iterations=2))
    assert training_steps(load_checkpoint(tuned.last)["card"]) == 4  # 2 + the 2 it was deepened from
    done = subprocess.run([sys.executable, str(SCRIPT), str(first.last), "--cascades", "0", "-o",
                           str(tmp_path / "bad.pt")], capture_output=True, encoding="utf-8", check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1 and "last.pt" in lines[0] and "cascades" in lines[0]
    assert not (tmp_path / "bad.pt").exists()

