"""``rcreg web`` without a browser: the loopback default and the warning for other hosts, bad options in one
line, lazy imports, and the web app's option parsing."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from rcreg.cli import build_parser, main
from rcreg.web import server


def test_default_host_is_loopback():
    args = build_parser().parse_args(["web"])
    assert (args.host, args.port, args.data) == ("127.0.0.1", 8080, None)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_hosts_get_no_warning(host):
    assert server.is_loopback(host) and server.host_warning(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.org"])
def test_other_hosts_get_a_one_line_warning(host):
    warning = server.host_warning(host)
    assert warning.startswith(f"rcreg web: warning: listening on {host}:") and "no authentication" in warning
    assert "\n" not in warning


def test_serve_warns_then_passes_the_host_to_trame(monkeypatch, capsys):
    """serve() with trame's server stubbed: nothing is bound, the warning is printed before starting."""
    import trame.app

    import rcreg.web.app

    started = {}

    class StubServer:
        port = 1234
        controller = type("Controller", (), {"on_server_ready": type("Ready", (), {"add": lambda self, f: None})()})()

        def start(self, **kwargs):
            started.update(kwargs)

    monkeypatch.setattr(trame.app, "get_server", lambda *args, **kwargs: StubServer())
    monkeypatch.setattr(rcreg.web.app, "RegistrationApp", lambda *args: None)
    server.serve("0.0.0.0", 0)
    assert capsys.readouterr().err.startswith("rcreg web: warning: listening on 0.0.0.0:")
    assert started["host"] == "0.0.0.0" and started["port"] == 0 and started["timeout"] == 0
    server.serve("127.0.0.1", 0)
    assert capsys.readouterr().err == "" and started["host"] == "127.0.0.1"


@pytest.mark.parametrize("argv, message", [
    (["web", "--port", "70000"], "rcreg web: error: --port must be 0…65535, got 70000"),
    (["web", "--data", "/nonexistent/folder"], "rcreg web: error: --data /nonexistent/folder: not a folder"),
])
def test_bad_options_fail_in_one_line(argv, message, capsys):
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == message


def test_help_imports_neither_trame_nor_slicer():
    code = ("import sys; from rcreg.cli import build_parser; build_parser().parse_args(['web']); "
            "print(sorted({'trame', 'trame_slicer', 'slicer', 'vtk', 'torch'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_whole_number_options():
    from rcreg.web.app import _whole_number

    assert _whole_number("all", "cascades", "all") is None and _whole_number(" ", "cascades", "all") is None
    assert _whole_number("3", "cascades", "all") == 3 and _whole_number("0", "refinement iterations", "default") == 0
    with pytest.raises(ValueError, match="^cascades must be 'all' or a whole number, got 'two'$"):
        _whole_number("two", "cascades", "all")


def test_positive_number_options():
    from rcreg.web.app import _positive_number

    assert _positive_number("default", "refinement weight", "default") is None
    assert _positive_number(" 2.5 ", "refinement weight", "default") == 2.5
    for bad in ("0", "-1", "nan", "inf", "heavy"):
        with pytest.raises(ValueError, match=f"^refinement weight must be 'default' or a number > 0, got '{bad}'$"):
            _positive_number(bad, "refinement weight", "default")


def test_page_options_become_register_volumes_keywords():
    """The page's text fields reach the Lib's registerVolumes under its own parameter names."""
    from types import SimpleNamespace

    import importlib

    from rcreg.web.app import RegistrationApp
    from rcreg.web.lib import import_lib

    lib = import_lib()
    logic = importlib.import_module("RecursiveCascadeRegistrationLib.logic")
    state = SimpleNamespace(model=lib.choices.DEFAULT, cascades="2", repeat="1", refine_iterations="3",
                            refine_similarity="mi", refine_weight="2.5", refine_levels="2", refine_spacing="3",
                            initial_alignment="mass", symmetric=True, flip_average=True, diffeomorphic=True,
                            device="cpu")
    options = RegistrationApp._options(SimpleNamespace(lib=lib, state=state))
    assert options == {"model": None, "cascades": 2, "repeat": 1, "refineIterations": 3, "refineSimilarity": "mi",
                       "refineWeight": 2.5, "refineLevels": 2, "refineSpacing": 3.0, "initialAlignment": "mass",
                       "symmetric": True, "flipAverage": True, "diffeomorphic": True, "device": "cpu"}
    parameters = inspect.signature(logic.RecursiveCascadeRegistrationLogic.registerVolumes).parameters
    assert set(options) <= set(parameters)
    state.refine_weight = "heavy"
    with pytest.raises(ValueError, match="^refinement weight must be"):
        RegistrationApp._options(SimpleNamespace(lib=lib, state=state))


def test_one_slicer_core_version_for_the_project():
    """The Slicer module's tests (test extra) and the web app (web extra) pin the same slicer-core, installed."""
    import importlib.metadata
    import re

    from web_page import REPOSITORY

    pyproject = (REPOSITORY / "pyproject.toml").read_text(encoding="utf-8")
    pins = {extra: re.findall(r'"slicer-core==([^"]+)"', re.search(rf"^{extra} = \[(.*)\]$", pyproject, re.M).group(1))
            for extra in ("test", "web")}
    assert pins["test"] == pins["web"] and len(pins["web"]) == 1
    assert importlib.metadata.version("slicer-core") == pins["web"][0]
    trame_slicer = importlib.metadata.requires("trame-slicer")
    assert any(re.match(r"slicer-core\b.*<5\.12", requirement) for requirement in trame_slicer)  # why 5.11
