"""Training/average_checkpoints.py: the mean of checkpoints' weights, as an inference file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rcreg import RecursiveCascadeNetwork, save_checkpoint
from rcreg.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from rcreg.training.state import average_checkpoints

SCRIPT = Path(__file__).resolve().parents[2] / "Training" / "average_checkpoints.py"


def _saved(tmp_path: Path, name: str, step: int, seed: int, **model) -> Path:
    torch.manual_seed(seed)
    network = RecursiveCascadeNetwork("vtn", n_cascades=1, width=0.125, **model)
    return save_checkpoint(tmp_path / name, network, {"name": "m", "training": {"iterations": step}},
                           training={"step": step})


def test_average_is_the_mean_of_the_weights_and_records_the_steps(tmp_path):
    paths = [_saved(tmp_path, f"s{n}.pt", step, seed=n) for n, step in enumerate((100, 200, 300))]
    out = average_checkpoints(paths, tmp_path / "mean.pt")
    states = [load_checkpoint(p)["state_dict"] for p in paths]
    network, card = model_from_checkpoint(out)
    for key, value in network.state_dict().items():
        expected = sum(s[key].double() for s in states) / 3  # the mean, computed independently in float64
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6, msg=key)
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])  # the inputs really differ
    assert card["training"]["averaged_steps"] == [100, 200, 300] and card["training"]["iterations"] == 300
    assert "training" not in load_checkpoint(out)  # an inference file: nothing to resume


def test_average_refuses_other_architectures_and_a_single_checkpoint(tmp_path):
    one = _saved(tmp_path, "a.pt", 1, 0)
    other = _saved(tmp_path, "b.pt", 2, 1, diffeomorphic=True)
    with pytest.raises(CheckpointError, match="b.pt.*one architecture"):
        average_checkpoints([one, other], tmp_path / "mean.pt")
    with pytest.raises(CheckpointError, match="at least two"):
        average_checkpoints([one], tmp_path / "mean.pt")
    assert not (tmp_path / "mean.pt").exists()


def test_script_writes_the_file_and_gives_one_line_errors(tmp_path):
    paths = [str(_saved(tmp_path, f"s{n}.pt", n, seed=n)) for n in range(2)]
    done = subprocess.run([sys.executable, str(SCRIPT), *paths, "-o", str(tmp_path / "mean.pt")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and (tmp_path / "mean.pt").is_file(), done.stderr
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    done = subprocess.run([sys.executable, str(SCRIPT), paths[0], str(tmp_path / "bad.pt"), "-o",
                           str(tmp_path / "x.pt")], capture_output=True, text=True)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1 and "bad.pt" in lines[0], done.stderr
    assert lines[0].startswith("average_checkpoints.py: error:") and not (tmp_path / "x.pt").exists()
