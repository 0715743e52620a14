"""Training options: YAML file, flag overrides, help text, value checks."""
from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from rcreg.training.config import ConfigError, TrainConfig, add_arguments, choices, config_from_args


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_flags_override_file_and_paths_are_relative_to_it(tmp_path):
    (tmp_path / "conf").mkdir()
    config_file = tmp_path / "conf" / "c.yaml"
    config_file.write_text("train: ../data/list.csv\ncascades: 5\nlr: 1\ngrid: [32, 32, 40]\namp: true\n"
                           "normalization: {type: window, min: -1000, max: 400}\n")
    config = _parse(["--config", str(config_file), "--cascades", "2", "--no-amp", "--lr-steps", "10", "20"])
    assert config.train == str(tmp_path / "conf" / "../data/list.csv")
    assert (config.cascades, config.amp, config.lr_steps, config.grid) == (2, False, [10, 20], [32, 32, 40])
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.normalization == {"type": "window", "min": -1000, "max": 400}
    assert config.width == 1.0 and config.similarity == "pearson"  # untouched defaults (the paper's)
    config_file.write_text("train: 'a/; sample:colin27_t1_brain;/abs/b.csv'\n")
    assert _parse(["--config", str(config_file)]).train == f"{tmp_path / 'conf' / 'a'};sample:colin27_t1_brain;/abs/b.csv"


def test_help_documents_every_option():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text


@pytest.mark.parametrize("values,needle", [
    (dict(iterations=0), "iterations"),
    (dict(cascades=0, affine=False), "at least one cascade"),
    (dict(grid=[4, 64, 64]), "grid"),
    (dict(mode="atlas"), "atlas"),
    (dict(train=None), "no training data"),
    (dict(ncc_window=8), "ncc_window: local NCC window must be a positive odd number"),
    (dict(snapshot_every=-1), "snapshot_every must be ≥ 0"),
    (dict(contrast=1.5), "contrast must be a share"),
])
def test_invalid_values(values, needle):
    with pytest.raises(ConfigError, match=needle):
        TrainConfig(**{"train": "x.csv", **values}).check()


@pytest.mark.parametrize("line,needle", [
    ("iterations: abc", "iterations must be an integer, got 'abc'"),
    ("grid: 64", "grid must be a list of integers, got 64"),
    ("grid: [64, 64, x]", "grid must be a list of integers"),
    ("lr: fast", "lr must be a number, got 'fast'"),
    ("cascades: 2.5", "cascades must be an integer, got 2.5"),
    ("lr_steps: 5", "lr_steps must be a list of integers, got 5"),
    ("save_every: often", "save_every must be an integer, got 'often'"),
    ("amp: 1", "amp must be true or false, got 1"),
    ("width: true", "width must be a number, got True"),
    ("similarity: nmi", "similarity must be one of pearson, ncc, mse, got 'nmi'"),
    ("normalization: percentile", "normalization must be a mapping"),
    ("val: [a, b]", "val must be a string or null"),
])
def test_wrong_types_in_yaml_are_one_line_errors_naming_file_and_key(tmp_path, line, needle):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(f"train: x.csv\n{line}\n")
    with pytest.raises(ConfigError) as info:
        _parse(["--config", str(config_file)])
    assert str(info.value).startswith(f"{config_file}: {needle}")
    assert "\n" not in str(info.value)


def test_wrong_types_in_python_are_config_errors():
    with pytest.raises(ConfigError, match="iterations must be an integer"):
        TrainConfig(train="x.csv", iterations="10").check()
    with pytest.raises(ConfigError, match="base must be one of voxelmorph, vtn"):
        TrainConfig(train="x.csv", base="unet").check()
    assert TrainConfig(train="x.csv", lr=1, grid=[32, 32, 32]).check().lr == 1.0


def test_literal_options_give_the_cli_choices():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    actions = {a.dest: a for a in parser._actions}
    assert choices("similarity") == ("pearson", "ncc", "mse") == tuple(actions["similarity"].choices)
    assert tuple(actions["mode"].choices) == ("pairwise", "atlas", "paired")
    assert tuple(actions["affine_translation"].choices) == ("voxels", "extent")
    assert choices("iterations") is None and actions["iterations"].choices is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--similarity", "nmi"])


def test_objects_are_built_from_the_config_by_keyword():
    """model_kwargs/loss_kwargs/augmentation_kwargs carry every option to the object it configures."""
    from rcreg.cascade import RecursiveCascadeNetwork
    from rcreg.losses import RegistrationLoss
    from rcreg.training.augmentation import AugmentationSettings

    config = TrainConfig(train="x.csv", base="voxelmorph", cascades=2, width=0.125, affine=False, diffeomorphic=True,
                         affine_levels=5, affine_translation="extent", similarity="mse", reg_weight=2.0,
                         affine_similarity=0.5, rotation=3.0, noise=0.0, ffd_control_points=7).check()
    model = RecursiveCascadeNetwork(**config.model_kwargs())
    assert model.config == dict(base="voxelmorph", n_cascades=2, affine=False, width=0.125, level_widths=None,
                                affine_levels=5, affine_translation="extent", diffeomorphic=True)
    loss = RegistrationLoss(**config.loss_kwargs())
    assert (loss.similarity, loss.reg_weight, loss.affine_similarity_weight) == ("mse", 2.0, 0.5)
    settings = AugmentationSettings(**config.augmentation_kwargs())
    assert (settings.rotation, settings.noise, settings.ffd_control_points) == (3.0, 0.0, 7)


def test_train_script_without_config_starts_from_the_demo_config():
    """`python Training/train.py --iterations 20` refines the demo configuration (it used to drop it)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "Training" / "train.py"
    spec = importlib.util.spec_from_file_location("train_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = _parse(module.demo_arguments(["--iterations", "20"]))
    demo = _parse(["--config", str(module.DEMO)])
    assert config.iterations == 20 and demo.iterations == 200
    assert config.train == demo.train and config.train.startswith("sample:") and config.grid == [48, 48, 48]
    assert config.output.startswith("runs/demo-")
    assert _parse(module.demo_arguments(["--iterations", "20", "--output", "x"])).output == "x"
    own = module.demo_arguments(["--config", "mine.yaml"])
    assert own == ["--config", "mine.yaml"]
