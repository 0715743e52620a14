"""The training loop end to end on tiny phantoms: learning, exact resume, crash-safe checkpoints,
fp16 export, logs, and one-line errors for bad data paths."""
from __future__ import annotations

import csv
import io
import os

import numpy as np
import pytest
import torch

from rcreg.checkpoint import load_checkpoint, model_from_checkpoint
from rcreg.cli import main
from rcreg.training.logbook import TrainingLog
from rcreg.training.trainer import _Run, train

NO_AUGMENTATION = dict(ffd_amplitude=0, rotation=0, scaling=0, translation=0, gamma=0, bias_field=0, noise=0)


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_loss_falls_and_dice_beats_unregistered(tiny_config, shifted_pair):
    listing, unregistered = shifted_pair
    config = tiny_config(train=str(listing), val=str(listing), mode="paired", affine=False, cascades=1,
                         batch_size=1, iterations=30, lr=1e-3, lr_steps=[], val_every=30, save_every=30,
                         **NO_AUGMENTATION)
    train(config)
    similarity = [float(r["similarity"]) for r in _rows(f"{config.output}/train_log.csv")]
    assert len(similarity) == 30
    assert np.mean(similarity[-5:]) < 0.7 * np.mean(similarity[:5])
    final = _rows(f"{config.output}/val_log.csv")[-1]
    assert float(final["dice"]) > unregistered + 0.1, (final, unregistered)
    assert float(final["unregistered_dice"]) == pytest.approx(unregistered, abs=1e-5)  # logged beside it
    assert final["unregistered_score"] == final["unregistered_dice"]


def _interrupt_at(step):
    original = _Run._train_step

    def step_then_maybe_stop(self):
        if self.step == step:
            raise KeyboardInterrupt
        return original(self)

    return step_then_maybe_stop


def test_resume_is_exact(tiny_config, tmp_path, monkeypatch):
    full = tiny_config(output=str(tmp_path / "full"))
    reference = train(full).model.state_dict()

    cut = tiny_config(output=str(tmp_path / "cut"))
    with monkeypatch.context() as patch:
        patch.setattr(_Run, "_train_step", _interrupt_at(4))  # dies during step 5; last.pt holds step 3
        with pytest.raises(KeyboardInterrupt):
            train(cut)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["training"]["step"] == 3
    cut.resume = True
    resumed = train(cut).model.state_dict()

    assert reference.keys() == resumed.keys()
    for name, value in reference.items():
        assert torch.equal(value, resumed[name]), name
    # The logs continue without the lost step and match the uninterrupted run.
    assert _rows(tmp_path / "cut" / "train_log.csv") == _rows(tmp_path / "full" / "train_log.csv")
    assert _rows(tmp_path / "cut" / "val_log.csv") == _rows(tmp_path / "full" / "val_log.csv")


def test_checkpoint_write_killed_midway_keeps_previous(tiny_config, tmp_path, monkeypatch):
    config = tiny_config()
    real_save = torch.save

    def dying_save(obj, fh, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("training", {}).get("step") == 6:
            buffer = io.BytesIO()
            real_save(obj, buffer)
            fh.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # half the file, then the "crash"
            raise OSError("No space left on device")
        return real_save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        train(config)
    ckpt = load_checkpoint(f"{config.output}/last.pt")
    assert ckpt["training"]["step"] == 3
    model_from_checkpoint(ckpt)  # still a complete, loadable checkpoint
    assert not [p for p in os.listdir(config.output) if p.endswith(".tmp")]


def test_export_checkpoint_card_and_register(tiny_config, pair_list, tmp_path):
    config = tiny_config(name="phantom-test", modality="MR", iterations=3)
    result = train(config)
    raw = torch.load(result.export, weights_only=True)
    assert "training" not in raw and all(v.dtype == torch.float16 for v in raw["state_dict"].values()
                                          if v.is_floating_point())
    assert os.path.getsize(result.export) < 0.6 * os.path.getsize(result.best)
    exported, card = model_from_checkpoint(result.export)
    best, _ = model_from_checkpoint(result.best)
    assert card["name"] == "phantom-test" and card["grid"] == {"shape": [24, 24, 24], "region": "image"}
    assert card["cascades"] == 2 and card["training"]["iterations"] == card["validation"]["step"]
    assert card["validation"]["metric"] == "dice" and 0 < card["validation"]["value"] <= 1
    fixed, moving = torch.rand(2, 1, 1, 24, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(exported(fixed, moving).flow, best(fixed, moving).flow, atol=0.05, rtol=0.05)
    folder = pair_list.parent
    assert main(["register", "-f", str(folder / "phantom00.nii.gz"), "-m", str(folder / "phantom01.nii.gz"),
                 "-o", str(tmp_path / "registered"), "--model", str(result.export), "--device", "cpu", "-q"]) == 0


@pytest.mark.parametrize("args,needle", [
    (["--train", "{tmp}/missing.csv"], "missing.csv"),
    (["--train", "{tmp}/*.nii.gz"], "no image files match"),
    (["--train", "{list}", "--val", "{tmp}/nowhere"], "nowhere"),
    (["--train", "{list}", "--mode", "atlas", "--atlas", "{tmp}/atlas.nii.gz"], "atlas.nii.gz"),
    (["--train", "{list}", "--mode", "paired"], "fixed"),
    (["--config", "{tmp}/missing.yaml"], "missing.yaml"),
])
def test_bad_data_path_is_one_line_error_before_any_work(args, needle, phantom_list, tmp_path, capsys):
    output = tmp_path / "out"
    argv = [a.format(tmp=tmp_path, list=phantom_list) for a in args]
    assert main(["train", *argv, "--output", str(output), "--grid", "24", "24", "24"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("rcreg train: error:")
    assert not output.exists()


def test_unknown_config_key(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("train: x.csv\ncascade: 3\n")
    assert main(["train", "--config", str(config)]) == 1
    assert "unknown option(s) cascade" in capsys.readouterr().err


def test_tensorboard_events_and_missing_package(tmp_path, monkeypatch, capsys):
    log = TrainingLog(tmp_path / "tb", tensorboard=True)
    log.scalars("train", 1, {"total": 0.5})
    log.images(1, fixed=torch.rand(8, 8, 8), warped=torch.rand(8, 8, 8))
    log.close()
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)  # as if not installed
    log = TrainingLog(tmp_path / "plain", tensorboard=True)
    log.scalars("train", 1, {"total": 0.5})
    assert "tensorboard package is not installed" in capsys.readouterr().err
    assert _rows(tmp_path / "plain" / "train_log.csv") == [{"step": "1", "total": "0.5"}]


def test_atlas_mode_with_dice_supervision(tiny_config, phantom_list):
    folder = phantom_list.parent
    config = tiny_config(mode="atlas", atlas=str(folder / "phantom00.nii.gz"),
                         atlas_labels=str(folder / "phantom00_labels.nii.gz"), dice_weight=0.5, iterations=2,
                         val_every=2, save_every=2, affine=False)
    train(config)
    logged = _rows(f"{config.output}/train_log.csv")
    assert all(0 < float(r["dice"]) < 1 for r in logged)  # the soft Dice term is computed and logged
    validation = _rows(f"{config.output}/val_log.csv")[-1]
    assert 0 < float(validation["dice"]) <= 1 and validation["dice"] == validation["score"]


def test_dice_supervision_needs_labels(tiny_config, tmp_path, phantom_list):
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("image\n" + "\n".join(str(phantom_list.parent / f"phantom0{i}.nii.gz") for i in range(3)))
    with pytest.raises(ValueError, match="Dice supervision needs label maps"):
        train(tiny_config(train=str(unlabelled), dice_weight=1.0))


def test_init_starts_from_the_checkpoint_weights(tiny_config, tmp_path):
    first = train(tiny_config(output=str(tmp_path / "first"), iterations=3))
    start = {k: v.clone() for k, v in first.model.state_dict().items()}
    # lr 1e-12: Adam moves each weight by about 1e-12 per step, so the fine-tuned weights stay the initial ones.
    tuned = train(tiny_config(output=str(tmp_path / "tuned"), init=str(first.last), iterations=2, lr=1e-12,
                              lr_steps=[])).model.state_dict()
    fresh = train(tiny_config(output=str(tmp_path / "fresh"), iterations=2, lr=1e-12, lr_steps=[], seed=5)).model
    for name, value in start.items():
        torch.testing.assert_close(tuned[name], value, atol=1e-9, rtol=0, msg=name)
    assert any(not torch.allclose(fresh.state_dict()[k], v) for k, v in start.items() if v.is_floating_point())
    card = load_checkpoint(tmp_path / "tuned" / "last.pt")["card"]
    assert card["training"]["iterations"] == 2 and card["training"]["config"]["init"] == str(first.last)
    assert card["training"]["init"] == {"source": str(first.last), "training": load_checkpoint(first.last)["card"]["training"]}


def test_init_with_another_architecture_or_missing_file_fails_before_training(tiny_config, phantom_list, tmp_path,
                                                                              capsys):
    first = train(tiny_config(output=str(tmp_path / "first"), iterations=1, cascades=1))
    output = tmp_path / "other"
    with pytest.raises(ValueError, match="init .*last.pt"):
        train(tiny_config(output=str(output), init=str(first.last), cascades=2, cache=str(tmp_path / "new-cache")))
    assert not (output / "last.pt").exists() and not (tmp_path / "new-cache").exists()  # failed before preprocessing
    # a displacement model may be fine-tuned as a diffeomorphic one (same weights; small fields ≈ their velocity)
    diffeo = train(tiny_config(output=str(tmp_path / "diffeo"), init=str(first.last), cascades=1, iterations=1,
                               diffeomorphic=True))
    assert diffeo.model.diffeomorphic and torch.load(diffeo.last, weights_only=True)["model"]["diffeomorphic"]
    assert main(["train", "--train", str(phantom_list), "--init", str(tmp_path / "none.pt"), "--output", str(output)]) == 1
    assert "none.pt" in capsys.readouterr().err


def test_yaml_init_names_an_installed_model_or_a_file_next_to_the_config(tmp_path):
    from rcreg.training.config import load_config
    (tmp_path / "mine.pt").write_bytes(b"")
    config = tmp_path / "c.yaml"
    config.write_text("init: brain_mr_t1\n", encoding="utf-8")
    assert load_config(config)["init"] == "brain_mr_t1"
    config.write_text("init: mine.pt\n", encoding="utf-8")
    assert load_config(config)["init"] == str(tmp_path / "mine.pt")


@pytest.mark.parametrize("augment_fixed", [False, True])
def test_augment_fixed_deforms_the_fixed_image_only_when_asked(tiny_config, monkeypatch, augment_fixed):
    import rcreg.training.trainer as trainer
    from rcreg.training.datasets import TrainingPairs

    sampled, network_inputs = [], []
    real_sample, real_forward = TrainingPairs.sample, trainer.RecursiveCascadeNetwork.forward

    def sample(self, *args, **kwargs):
        batch = real_sample(self, *args, **kwargs)
        sampled.append(batch.fixed.clone())
        return batch

    def forward(self, fixed, moving, *args, **kwargs):
        network_inputs.append(fixed.detach().clone())
        return real_forward(self, fixed, moving, *args, **kwargs)

    monkeypatch.setattr(TrainingPairs, "sample", sample)
    monkeypatch.setattr(trainer.RecursiveCascadeNetwork, "forward", forward)
    train(tiny_config(iterations=1, val=None, augment_fixed=augment_fixed, gamma=0, bias_field=0, noise=0))
    assert len(sampled) == len(network_inputs) == 1
    # No intensity augmentation here, so without augment_fixed the network sees the sampled fixed image.
    assert torch.allclose(network_inputs[0], sampled[0].clamp(0, 1)) != augment_fixed


def test_identity_pairs_share_and_labels():
    from rcreg.training.trainer import _identity_pairs

    fixed, moving = torch.zeros(400, 1, 2, 2, 2), torch.ones(400, 1, 2, 2, 2)
    fixed_labels, moving_labels = torch.full_like(fixed, 3, dtype=torch.long), torch.ones_like(fixed, dtype=torch.long)
    out, out_labels, _ = _identity_pairs(fixed, moving, fixed_labels, moving_labels, 0.25, torch.Generator().manual_seed(0))
    same = (out == 0).flatten(1).all(1)
    assert ((out == 0) | (out == 1)).all() and (out.flatten(1).amin(1) == out.flatten(1).amax(1)).all()
    assert 0.18 < same.float().mean() < 0.32  # about a quarter of the pairs became identity pairs
    assert torch.equal(out_labels.flatten(1)[:, 0] == 3, same)  # labels follow their images
    none, _, _ = _identity_pairs(fixed, moving, None, None, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(none, moving)


def test_identity_pairs_out_of_range_is_a_config_error(tiny_config):
    from rcreg.training.config import ConfigError
    with pytest.raises(ConfigError, match="identity_pairs"):
        tiny_config(identity_pairs=1.5).check()


def test_resumed_fine_tuning_keeps_its_provenance_without_the_source(tiny_config, tmp_path, monkeypatch):
    source = train(tiny_config(output=str(tmp_path / "source"), iterations=1)).last
    cut = tiny_config(output=str(tmp_path / "tuned"), init=str(source), iterations=4, save_every=2)
    with monkeypatch.context() as patch:
        patch.setattr(_Run, "_train_step", _interrupt_at(3))
        with pytest.raises(KeyboardInterrupt):
            train(cut)
    provenance = load_checkpoint(tmp_path / "tuned" / "last.pt")["card"]["training"]["init"]
    os.remove(source)  # the source may be gone by the time the run is resumed
    cut.resume = True
    train(cut)
    card = load_checkpoint(tmp_path / "tuned" / "last.pt")["card"]
    assert card["training"]["iterations"] == 4 and card["training"]["init"] == provenance
    assert provenance["source"] == str(source)


def test_a_killed_runs_temporary_checkpoint_is_removed_on_resume(tiny_config, tmp_path, monkeypatch):
    """SIGKILL during a checkpoint write leaves atomic_path's temporary file; the next run removes it."""
    config = tiny_config(output=str(tmp_path / "run"))
    with monkeypatch.context() as patch:
        patch.setattr(_Run, "_train_step", _interrupt_at(4))
        with pytest.raises(KeyboardInterrupt):
            train(config)
    stale = tmp_path / "run" / ".tmp-x1y2last.pt"
    stale.write_bytes(b"half a checkpoint")
    config.resume = True
    train(config)
    assert not stale.exists() and load_checkpoint(tmp_path / "run" / "last.pt")["training"]["step"] > 3


def test_synthetic_and_identity_pairs_carry_their_true_field(tiny_config, monkeypatch):
    """What the field loss is given is the true field: for a synthetic pair the fixed image the network sees
    is its moving image resampled (scipy, trilinear) at p + u(p); for an identity pair u = 0 and the two
    images are equal; other pairs are marked unknown."""
    from scipy.ndimage import map_coordinates

    import rcreg.training.trainer as trainer
    from rcreg.losses import RegistrationLoss

    seen = []
    real_loss = RegistrationLoss.forward

    def loss(self, output, fixed, warped_labels=None, fixed_labels=None, moving=None, known_flow=None,
             known_weights=None):
        known = known_weights.flatten(1).amax(1) > 0
        seen.append((fixed.detach().clone(), moving.detach().clone(), known_flow.clone(), known))
        return real_loss(self, output, fixed, warped_labels, fixed_labels, moving, known_flow, known_weights)

    monkeypatch.setattr(trainer.RegistrationLoss, "forward", loss)
    train(tiny_config(iterations=6, val=None, batch_size=4, synthetic_pairs=0.5, identity_pairs=0.25,
                      field_weight=1.0, gamma=0, bias_field=0, noise=0, ffd_amplitude=2.0))
    kinds = {"synthetic": 0, "identity": 0, "unknown": 0}
    for fixed, moving, flows, known in seen:
        for f, m, u, k in zip(fixed[:, 0].numpy(), moving[:, 0].numpy(), flows.numpy(), known.numpy()):
            if not k:
                kinds["unknown"] += 1
            elif not u.any():
                kinds["identity"] += 1
                np.testing.assert_array_equal(f, m)
            else:
                kinds["synthetic"] += 1
                points = np.indices(f.shape, dtype=np.float64) + u
                expected = map_coordinates(m.astype(np.float64), points, order=1, mode="constant", cval=0.0)
                assert np.abs(expected - f).max() < 1e-4
                assert np.abs(m - f).mean() > 1e-3  # and the pair does need a deformation
    assert min(kinds.values()) > 0, kinds


def test_field_weight_needs_pairs_with_a_known_field(tiny_config):
    from rcreg.training.config import ConfigError
    with pytest.raises(ConfigError, match="field_weight"):
        tiny_config(field_weight=1.0).check()
    with pytest.raises(ConfigError, match="synthetic_pairs"):
        tiny_config(synthetic_pairs=-0.1).check()
    tiny_config(field_weight=1.0, synthetic_pairs=0.5).check()


def test_snapshots_are_kept_and_average(tiny_config, tmp_path):
    """``snapshot_every``: the weights of every N-th step as an inference file, exactly the run's weights
    at that step (the last one equals the final model), and they average with Training/average_checkpoints.py."""
    from rcreg.training.state import average_checkpoints

    result = train(tiny_config(snapshot_every=2))
    folder = tmp_path / "run" / "snapshots"
    assert sorted(p.name for p in folder.iterdir()) == ["step_2.pt", "step_4.pt", "step_6.pt"]
    last, card = model_from_checkpoint(folder / "step_6.pt")
    assert card["training"]["iterations"] == 6 and "training" not in load_checkpoint(folder / "step_6.pt")
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, last.state_dict()[name]), name
    first = load_checkpoint(folder / "step_2.pt")["state_dict"]
    assert any(not torch.equal(first[k], v) for k, v in last.state_dict().items())  # training moved on
    mean, card = model_from_checkpoint(average_checkpoints([folder / "step_2.pt", folder / "step_6.pt"], tmp_path / "m.pt"))
    assert card["training"]["averaged_steps"] == [2, 6]
    for name, value in mean.state_dict().items():
        torch.testing.assert_close(value, (first[name] + last.state_dict()[name]) / 2)



@pytest.mark.parametrize("symmetric, flip_average", [(False, True), (True, False)])
def test_a_teachers_averaged_flow_is_the_field_target_of_the_other_pairs(tiny_config, tmp_path, monkeypatch,
                                                                         symmetric, flip_average):
    """With a teacher, every pair has a field-loss target over its content: identity pairs keep no motion, every
    other pair gets the teacher network's flow for exactly the images the network sees, averaged over the pair
    and its mirrors along each axis (mirrored back here by hand: flipped, and that axis's component negated) or
    made symmetric (mean with the inverse of the swapped pair's flow)."""
    import rcreg.training.trainer as trainer
    from rcreg.losses import RegistrationLoss
    from rcreg.spatial import invert_flow

    first = train(tiny_config(output=str(tmp_path / "teacher"), iterations=3, lr=1e-3, val=None))
    teacher, _ = model_from_checkpoint(first.last)
    seen, real_loss = [], RegistrationLoss.forward

    def loss(self, output, fixed, warped_labels=None, fixed_labels=None, moving=None, known_flow=None,
             known_weights=None):
        seen.append((fixed.detach().clone(), moving.detach().clone(), known_flow.clone(), known_weights.clone()))
        return real_loss(self, output, fixed, warped_labels, fixed_labels, moving, known_flow, known_weights)

    monkeypatch.setattr(trainer.RegistrationLoss, "forward", loss)
    train(tiny_config(output=str(tmp_path / "student"), iterations=4, val=None, batch_size=4, identity_pairs=0.3,
                      field_weight=1.0, teacher=str(first.last), teacher_symmetric=symmetric,
                      teacher_flip_average=flip_average, gamma=0, bias_field=0, noise=0))

    def flow(f, m, axis=None):
        if axis is None:
            return teacher(f, m).flow
        mirrored = teacher(f.flip(2 + axis), m.flip(2 + axis)).flow.flip(2 + axis)
        mirrored[:, axis] *= -1
        return mirrored

    kinds = {"identity": 0, "taught": 0}
    with torch.no_grad():
        for fixed, moving, target, weights in seen:
            assert (weights.flatten(1).amax(1) > 0).all()  # every pair is supervised
            for i in range(fixed.shape[0]):
                f, m, u = fixed[i:i + 1], moving[i:i + 1], target[i:i + 1]
                if torch.equal(f, m):
                    kinds["identity"] += 1
                    assert not u.any()
                    continue
                kinds["taught"] += 1
                if flip_average:
                    expected = sum(flow(f, m, axis) for axis in (None, 0, 1, 2)) / 4
                else:
                    expected = 0.5 * (flow(f, m) + invert_flow(flow(m, f)))
                scale = expected.abs().max()
                assert scale > 1e-3
                assert (u - expected).abs().max() < 1e-4 * scale + 1e-6
                assert (u - flow(f, m)).abs().max() > 1e-2 * scale  # the averaging changed the single pass
    assert min(kinds.values()) > 0, kinds


def test_teacher_needs_field_weight_and_a_valid_repeat(tiny_config):
    from rcreg.training.config import ConfigError
    with pytest.raises(ConfigError, match="teacher needs field_weight"):
        tiny_config(teacher="brain_mr_t1").check()
    with pytest.raises(ConfigError, match="teacher_repeat"):
        tiny_config(teacher="brain_mr_t1", field_weight=1.0, teacher_repeat=0).check()
    tiny_config(teacher="brain_mr_t1", field_weight=1.0).check()  # the teacher's pairs are enough for field_weight
