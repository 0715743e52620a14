"""The module file under slicer-core: it imports without Qt, its panel names match the .ui file, the
CMake lists ship every Python file, and the in-Slicer self-test runs here through the same logic."""
from __future__ import annotations

import importlib
import re
import typing
import unittest
import xml.etree.ElementTree as ElementTree

from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_DIR = REPOSITORY / "RecursiveCascadeRegistration"
MODULE_FILE = MODULE_DIR / "RecursiveCascadeRegistration.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "RecursiveCascadeRegistration.ui"


@pytest.fixture(scope="module")
def module():
    return importlib.import_module("RecursiveCascadeRegistration")


def uiWidgets() -> dict[str, ElementTree.Element]:
    return {w.get("name"): w for w in ElementTree.parse(UI_FILE).iter("widget") if w.get("name")}


def test_module_imports_without_qt(module):
    assert module.qt is None  # slicer-core has no Qt: the guarded imports took the fallback
    logic = module.RecursiveCascadeRegistrationLogic()
    assert callable(logic.registerVolumes)
    assert {"RecursiveCascadeRegistration", "RecursiveCascadeRegistrationWidget",
            "RecursiveCascadeRegistrationTest"} <= set(vars(module))


def test_every_ui_name_used_by_the_code_exists_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert {"applyButton", "cancelButton", "modelComboBox", "metricsTableWidget"} <= used  # the regex sees them
    missing = used - set(uiWidgets())
    assert not missing, f"names used as self.ui.<name> but absent from {UI_FILE.name}: {sorted(missing)}"


def test_ui_parameter_bindings_match_the_parameter_node(module):
    fields = typing.get_type_hints(module.RecursiveCascadeRegistrationParameterNode, include_extras=True)
    bound = {}
    for name, widget in uiWidgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = name
    assert bound, "no widget is bound to the parameter node"
    assert set(bound) <= set(fields), f"unknown parameters in the .ui file: {sorted(set(bound) - set(fields))}"
    # Every parameter except the model (set from the combo box and path editor by code) is bound.
    assert set(fields) - set(bound) == {"model"}


def test_node_selectors_offer_the_annotated_node_class(module):
    fields = typing.get_type_hints(module.RecursiveCascadeRegistrationParameterNode)
    for name, widget in uiWidgets().items():
        if widget.get("class") != "qMRMLNodeComboBox":
            continue
        parameter = next(p.find("string").text for p in widget.findall("property") if p.get("name") == "SlicerParameterName")
        nodeTypes = [s.text for p in widget.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")]
        assert nodeTypes == [fields[parameter].__name__], name


def test_cmake_ships_every_python_file_and_resource():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    shipped = {path.relative_to(MODULE_DIR).as_posix().replace("RecursiveCascadeRegistration", "${MODULE_NAME}")
               for pattern in ("*.py", "RecursiveCascadeRegistrationLib/*.py", "Resources/*.txt", "Resources/*/*")
               for path in MODULE_DIR.glob(pattern)}
    missing = {name for name in shipped if name not in cmake}
    assert not missing, f"not listed in {MODULE_DIR.name}/CMakeLists.txt: {sorted(missing)}"
    top = (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r'EXTENSION_CATEGORY\s+"Registration"', top)
    assert "add_subdirectory(RecursiveCascadeRegistration)" in top


def test_engine_is_found_and_complete():
    from RecursiveCascadeRegistrationLib import engine

    assert engine.missingPackages() == []
    rcreg = engine.importEngine()
    assert callable(rcreg.register)
    assert engine.bundledModelNames() == sorted(name for name, _ in rcreg.models.list_models())


def test_in_slicer_self_test_passes_here(module, scene):
    result = unittest.TextTestRunner(verbosity=0).run(module.RecursiveCascadeRegistrationTest())
    assert result.wasSuccessful(), result.failures + result.errors
    assert result.testsRun == 1
