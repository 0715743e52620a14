"""Training/bundle_model.py: a checkpoint becomes a bundled fp16 model whose card carries its held-out scores."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from rcreg import RecursiveCascadeNetwork, save_checkpoint
from rcreg.checkpoint import load_checkpoint, model_from_checkpoint

SCRIPT = Path(__file__).resolve().parents[2] / "Training" / "bundle_model.py"


@pytest.fixture
def bundle():
    spec = importlib.util.spec_from_file_location("bundle_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(family, dice, cascades=None, refine=0, default_refine=False, previous=None):
    row = {"method": f"{family} {cascades}", "family": family, "cascades": cascades, "repeat": 1, "refine": refine,
           "default_refine": default_refine, "diffeomorphic": False, "network": True, "dice_mean": dice,
           "hd95_mm": 2.0, "folding_pct": 0.0, "sdlogj": 0.1, "correlation": 0.9, "seconds": 0.5, "dice": {"a": dice}}
    return row if previous is None else {**row, "previous": previous}  # older reports have no "previous"


def test_bundle_writes_fp16_model_with_evaluation(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle, "MODELS_DIR", tmp_path / "models")
    (tmp_path / "models").mkdir()
    network = RecursiveCascadeNetwork("vtn", n_cascades=2, affine=True, width=0.125)
    save_checkpoint(tmp_path / "last.pt", network, {"name": "run", "modality": "MR", "validation": {}})
    report = {"env": {"date": "2026-11-24 12:00 UTC"}, "cases": [
        {"name": "brain case", "kind": "synthetic", "domain": "brain", "note": "held out",
         "rows": [_row("identity", 0.5), _row("ours", 0.3, 2, previous="v1"),  # an earlier model's rows: not this one's
                  _row("ours", 0.35, 2, refine=10, default_refine=True, previous="v1"), _row("ours", 0.6, 1),
                  _row("ours", 0.7, 2, previous=""), _row("ours", 0.85, 2, refine=10, default_refine=True),
                  _row("ANTs SyN", 0.8)]},
        {"name": "ct case", "kind": "real", "domain": "ct", "note": "", "rows": [_row("ours", 0.1, 2)]}]}
    (tmp_path / "bench.json").write_text(json.dumps(report), encoding="utf-8")
    assert bundle.main([str(tmp_path / "last.pt"), "brain_x", "--domain", "brain", "--description", "new words",
                        "--evaluation", str(tmp_path / "bench.json"), "--refinement", '{"weight": 1.5}']) == 0
    raw = torch.load(tmp_path / "models" / "brain_x.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values() if v.is_floating_point())
    card = load_checkpoint(tmp_path / "models" / "brain_x.pt")["card"]
    assert card["name"] == "brain_x" and card["modality"] == "MR" and card["description"] == "new words"
    (case,) = card["evaluation"]["cases"]  # only the brain domain, scored with all 2 cascades
    assert case["model"]["dice_mean"] == 0.7 and case["model_refined"]["dice_mean"] == 0.85
    assert card["refinement"] == {"weight": 1.5}
    assert case["ants_syn"]["dice_mean"] == 0.8 and case["identity"]["dice_mean"] == 0.5
    bundled, _ = model_from_checkpoint(tmp_path / "models" / "brain_x.pt")
    for name, value in network.state_dict().items():
        torch.testing.assert_close(bundled.state_dict()[name], value.half().float(), msg=name)


def test_bundle_refuses_a_benchmark_of_another_model(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle, "MODELS_DIR", tmp_path)
    save_checkpoint(tmp_path / "last.pt", RecursiveCascadeNetwork("vtn", n_cascades=3, width=0.125), {})
    report = {"env": {"date": "d"}, "cases": [{"name": "c", "kind": "real", "domain": "ct", "note": "",
                                               "rows": [_row("ours", 0.1, 2)]}]}
    (tmp_path / "bench.json").write_text(json.dumps(report), encoding="utf-8")
    with pytest.raises(ValueError, match="no network-only row with 3 cascades for c"):
        bundle.main([str(tmp_path / "last.pt"), "ct_x", "--domain", "ct", "--evaluation", str(tmp_path / "bench.json")])
    assert not (tmp_path / "ct_x.pt").exists()


def test_bundle_script_gives_one_line_errors(tmp_path):
    """Run as a script, a bad checkpoint is one line on stderr and exit code 1, no traceback."""
    import subprocess
    import sys

    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "bad.pt"), "x", "--domain", "ct"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bundle_model.py: error:") and "bad.pt" in lines[0], done.stderr
