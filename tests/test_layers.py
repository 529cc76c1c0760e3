"""Imports run one way: each byol_core module sits in a layer, and imports only from its own
layer or lower ones (read from the source, so a new upward import fails here, not in review).
byol_core never imports Dagster or DVC; pipelines/ may import byol_core, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

# Lowest first. A module not named here must be placed: the test says so.
LAYERS = {
    "base": ["errors", "progress", "io", "io.*", "csvfile", "inputs", "device", "onnxmodel", "pictures", "metrics"],
    "schema": ["schema", "schema.*", "config"],
    "data": ["data", "data.*"],
    "model": ["train", "train.*", "evaluate", "retrieval", "export"],
    "search": ["search", "search.*"],
    "tools": ["checks", "verify", "promote"],
    "stages": ["stages", "stages.*"],
    "cli": ["cli", ""],  # "": byol_core/__init__.py
}
PACKAGES = ("io", "schema", "data", "train", "search", "stages")  # byol_core's subpackages


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "byol_core").rglob("*.py")):
        parts = path.relative_to(ROOT / "byol_core").with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _layer(name: str) -> int:
    for rank, members in enumerate(LAYERS.values()):
        for member in members:
            if name == member or (member.endswith(".*") and name.startswith(member[:-1])):
                return rank
    raise LookupError(name)


def _imports(path: Path) -> set[str]:
    """The byol_core modules ``path`` imports at run time (not under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and getattr(block.test, "id", None) == "TYPE_CHECKING" for node in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "byol_core":
            base = node.module.removeprefix("byol_core").lstrip(".")
            for alias in node.names:  # `from byol_core import data` names a module; `from byol_core.x import f` does not
                candidate = f"{base}.{alias.name}".lstrip(".")
                found.add(candidate if candidate in _modules() else base)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("byol_core").lstrip(".") for a in node.names
                         if a.name.split(".")[0] == "byol_core")
    return found


def _third_party(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    return names


def test_every_module_has_a_layer():
    unplaced = []
    for name in _modules():
        try:
            _layer(name)
        except LookupError:
            unplaced.append(name)
    assert not unplaced, f"place these byol_core modules in a layer of tests/test_layers.py: {unplaced}"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_imports_from_a_higher_layer(name):
    own = _layer(name)
    upward = sorted(f"{other} ({list(LAYERS)[_layer(other)]})" for other in _imports(_modules()[name])
                    if other != name and _layer(other) > own)
    assert not upward, f"byol_core.{name} ({list(LAYERS)[own]}) imports from a higher layer: {', '.join(upward)}"


def test_no_two_subpackages_import_each_other():
    """data, train and search each read what is below them (io, schema; train and search read
    data), never one another both ways."""
    def package(name: str) -> str | None:
        return name.split(".")[0] if name.split(".")[0] in PACKAGES else None

    edges = {(package(name), package(other)) for name, path in _modules().items() for other in _imports(path)}
    edges = {(a, b) for a, b in edges if a and b and a != b}
    both = sorted(f"{a} <-> {b}" for a, b in edges if (b, a) in edges and a < b)
    assert not both, f"subpackages that import each other: {both}"
    assert ("train", "search") not in edges and ("search", "train") not in edges, edges


def test_every_import_from_byol_core_names_something_that_exists():
    """Lazy imports inside functions run only when called: each `from byol_core... import name`
    anywhere (byol_core, pipelines, tests, benchmarks, scripts) must name a module or an
    attribute that is there, so a moved module cannot leave one behind."""
    import importlib

    missing = []
    for folder in ("byol_core", "pipelines", "tests", "benchmarks", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.ImportFrom) and node.module and not node.level
                        and node.module.split(".")[0] == "byol_core"):
                    continue
                for alias in node.names:
                    try:
                        module = importlib.import_module(node.module)
                    except ImportError:
                        missing.append(f"{path.relative_to(ROOT)}: {node.module}")
                        continue
                    if not hasattr(module, alias.name) and \
                            importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                        missing.append(f"{path.relative_to(ROOT)}: {node.module}.{alias.name}")
    assert not missing, missing


def test_byol_core_never_imports_dagster_or_dvc():
    """Only the command speaks Dagster's Pipes protocol (dagster-pipes, a small package with no
    Dagster in it) to report to a run that started it."""
    for name, path in _modules().items():
        allowed = {"dagster_pipes"} if name == "cli" else set()
        assert not _third_party(path) & ({"dagster", "dagster_pipes", "dvc", "pipelines"} - allowed), name


def test_the_layer_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check can fail: a base module that imports the training loop is caught."""
    fake = tmp_path / "errors.py"
    fake.write_text("from byol_core.train.loop import pretrain\nfrom byol_core import stages\n")
    assert _imports(fake) == {"train.loop", "stages"}
    assert _layer("train.loop") > _layer("errors") and _layer("stages") > _layer("errors")
