"""`import rcreg` and the command line's parser do not import torch (PEP 562 lazy exports), while every
public name still resolves."""
from __future__ import annotations

import subprocess
import sys

import rcreg


def _imports_torch(code: str) -> bool:
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1] == "True"


def test_import_and_help_do_not_import_torch():
    assert not _imports_torch("import rcreg")
    assert not _imports_torch("from rcreg.cli import build_parser; build_parser()")
    assert _imports_torch("import rcreg; rcreg.register")  # the first use of a public name does


def test_every_public_name_resolves():
    for name in rcreg.__all__:
        assert getattr(rcreg, name) is not None, name
    assert rcreg.fields.compact_displacement is not None  # submodules as attributes
    assert set(rcreg.__all__) <= set(dir(rcreg))
