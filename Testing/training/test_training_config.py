"""Training options: YAML file, flag overrides, help text, value checks."""
from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from rcreg.training.config import ConfigError, TrainConfig, add_arguments, config_from_args


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
])
def test_invalid_values(values, needle):
    with pytest.raises(ConfigError, match=needle):
        TrainConfig(**{"train": "x.csv", **values}).check()
