"""SIGTERM and SIGKILL sent to a live `rcreg train` at several moments (while preprocessing writes the
cache, while a checkpoint is being written): SIGTERM exits 143 and removes its temporary file at once;
after SIGKILL the next run into the same output removes it; either way the next run finishes and leaves
exactly one complete checkpoint and no temporaries."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rcreg.checkpoint import load_checkpoint
from rcreg.cli import main

ITERATIONS = 4


def _config(tmp_path: Path, phantom_list: Path) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(f"train: {phantom_list}\ngrid: [24, 24, 24]\ncascades: 1\nwidth: 0.25\nbatch_size: 1\n"
                    f"iterations: {ITERATIONS}\nlr_steps: []\nsave_every: 1\nlog_every: 1\nprogress: false\n"
                    f"tensorboard: false\nthreads: 1\noutput: {tmp_path / 'run'}\n")
    return path


def _paused_training(config: Path, pause_at: int) -> subprocess.Popen:
    """`rcreg train` in a subprocess whose ``pause_at``-th torch.save (made inside atomic_path, so its
    temporary file exists) prints 'paused' and sleeps."""
    code = ("import sys, time, torch\n"
            "save, calls = torch.save, [0]\n"
            "def paused(*a, **k):\n"
            "    calls[0] += 1\n"
            f"    if calls[0] == {pause_at}:\n"
            "        print('paused', flush=True); time.sleep(60)\n"
            "    return save(*a, **k)\n"
            "torch.save = paused\n"
            "from rcreg.cli import main\n"
            f"sys.exit(main(['train', '--config', {str(config)!r}]))\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _temporaries(folder: Path) -> list[Path]:
    return list(folder.rglob(".tmp-*"))


@pytest.mark.slow
@pytest.mark.parametrize("moment,pause_at", [("preprocessing", 1), ("checkpoint", 7)])  # 5 volumes are cached first
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_during_training_leaves_nothing_behind_after_the_next_run(tmp_path, phantom_list, moment, pause_at, sig):
    config = _config(tmp_path, phantom_list)
    run = tmp_path / "run"
    process = _paused_training(config, pause_at)
    assert process.stdout.readline().strip() == "paused", process.stderr.read()
    assert len(_temporaries(run)) == 1  # the file being written: in run/cache, or run/.tmp-PID-…last.pt
    process.send_signal(sig)
    code = process.wait(timeout=60)
    if sig == signal.SIGTERM:
        assert code == 143 and "terminated" in process.stderr.read()
        assert not _temporaries(run)
    else:
        assert code == -signal.SIGKILL and len(_temporaries(run)) == 1
    resume = ["--resume"] if (run / "last.pt").is_file() else []
    assert bool(resume) == (moment == "checkpoint")  # the first checkpoint was complete before the pause
    assert main(["train", "--config", str(config), *resume]) == 0
    assert not _temporaries(run)
    assert load_checkpoint(run / "last.pt")["training"]["step"] == ITERATIONS


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    """A preprocessing cache may be shared by runs: a live process's temporary file is left alone."""
    import os

    from rcreg.io import remove_stale_temporaries

    live, dead, unnamed = (tmp_path / f".tmp-{os.getpid()}-abclast.pt", tmp_path / ".tmp-999999999-xyz.pt",
                           tmp_path / ".tmp-x1y2last.pt")
    for path in (live, dead, unnamed):
        path.write_bytes(b"partial")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([dead, unnamed])
    assert live.exists()
