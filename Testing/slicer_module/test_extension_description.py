"""The Extensions Index entry (ExtensionsIndex/RecursiveCascadeRegistration.json) and the extension's
CMake metadata: the catalog-entry schema's fields (Slicer's Schemas/slicer-extension-catalog-entry-
schema-v1.0.1.json), the index's offline checks (category, literal icon/screenshot URLs, LICENSE), and
one repository URL throughout."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE = REPOSITORY / "RecursiveCascadeRegistration"
DESCRIPTION = REPOSITORY / "ExtensionsIndex" / "RecursiveCascadeRegistration.json"
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
# The schema's properties and their JSON types (it allows no others; $schema, category, scm_url are required).
SCHEMA_TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}


@pytest.fixture(scope="module")
def description() -> dict:
    return json.loads(DESCRIPTION.read_text(encoding="utf-8"))


def cmakeSetting(name: str) -> str:
    """The literal value of ``set(NAME "value")`` in the top-level CMakeLists.txt, read as the index reads it."""
    match = re.search(rf'set\s*\({name}\s*"([^"]+)"\s*\)', (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert match, f"no literal {name} in CMakeLists.txt"
    return match.group(1)


def test_description_follows_the_catalog_entry_schema(description):
    assert description["$schema"] == SCHEMA_URL
    assert {"$schema", "category", "scm_url"} <= set(description) <= set(SCHEMA_TYPES)
    for key, value in description.items():
        assert type(value) is SCHEMA_TYPES[key], key
    assert all(isinstance(name, str) for name in description["build_dependencies"])
    assert description.get("tier", 5) in (1, 3, 5)
    assert description.get("scm_type", "git") in ("git", "local")
    assert b"\r" not in DESCRIPTION.read_bytes()  # the index wants LF line endings


def test_description_agrees_with_the_cmake_metadata(description):
    project = re.search(r"project\s*\(\s*(\w+)", (REPOSITORY / "CMakeLists.txt").read_text(encoding="utf-8")).group(1)
    assert DESCRIPTION.stem == project
    assert description["category"] == cmakeSetting("EXTENSION_CATEGORY") == "Registration"
    assert description["build_dependencies"] == cmakeSetting("EXTENSION_DEPENDS").split() == ["PyTorch"]
    assert (REPOSITORY / description["build_subdirectory"] / "CMakeLists.txt").is_file()


def test_one_repository_url_throughout(description):
    homepage = cmakeSetting("EXTENSION_HOMEPAGE")
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", homepage)
    assert description["scm_url"] == homepage + ".git"
    urls = [cmakeSetting("EXTENSION_ICONURL"), *cmakeSetting("EXTENSION_SCREENSHOTURLS").split()]
    prefix = f"{homepage}/raw/{description['scm_revision']}/"
    for url in urls:
        assert url.startswith(prefix), url
        path = REPOSITORY / url[len(prefix):]
        assert path.is_file() and path.suffix == ".png", url


def test_license_file_matches_pyproject():
    declared = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))["project"]["license"]["text"]
    text = (REPOSITORY / "LICENSE").read_text(encoding="utf-8")
    assert declared == "MIT" and text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text


def test_the_module_build_installs_every_lib_file():
    """The scripted module's CMakeLists lists every Python file of the Lib (a missing one would be absent
    from the built extension, though every test here, run from the source tree, would pass)."""
    listed = set(re.findall(r"\$\{MODULE_NAME\}Lib/(\w+\.py)", (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")))
    assert listed == {p.name for p in (MODULE / "RecursiveCascadeRegistrationLib").glob("*.py")}
