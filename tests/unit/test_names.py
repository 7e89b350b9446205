"""Names in one place: every `lifecycle.` tag, event or resource name the code writes is a constant of
lifecycle/names.py; no other module of the library, the tasks or the flows spells one (logger names and
module names, which share the prefix, are not tags). And no stage module imports another stage's module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from lifecycle import names
from tasks.graph import GRAPH

ROOT = Path(__file__).resolve().parents[2]
TAG = re.compile(r"^lifecycle\.[a-z0-9_.{-]")
QUERY = re.compile(r"tags\.`lifecycle\.")  # an MLflow search filter naming a tag
SOURCES = sorted(p for pattern in ("lifecycle/**/*.py", "tasks/*.py", "flows/*.py") for p in ROOT.glob(pattern)
                 if p != ROOT / "lifecycle" / "names.py")


def is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return not name.endswith(".") and (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file())


def spelled_tags(path: Path) -> list[str]:
    """The `lifecycle.`-prefixed string constants of a module that are not a logger's name, a module's name or a
    docstring."""
    tree = ast.parse(path.read_text())
    skip = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "getLogger" for arg in node.args}
    skip |= {id(node.body[0].value) for node in ast.walk(tree)
             if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
             and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
            and (QUERY.search(node.value) or (TAG.match(node.value) and not is_module(node.value)))]


def test_no_module_spells_a_tag_name() -> None:
    found = [line for path in SOURCES for line in spelled_tags(path)]
    assert found == [], "use the constants of lifecycle/names.py:\n" + "\n".join(found)


def test_the_check_finds_a_spelled_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = ROOT / "lifecycle" / "probe_for_test_names.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (
        'import logging\nlog = logging.getLogger("lifecycle.train")\nTAG = {"lifecycle.stage": 1}\n'
        'Q = f"tags.`lifecycle.role` = 1"\n' if self == module else Path.read_bytes(self).decode()))
    assert [line.split(": ", 1)[1] for line in spelled_tags(module)] == ["'lifecycle.stage'",
                                                                         "'tags.`lifecycle.role` = 1'"]


def test_names_are_unique_and_prefixed() -> None:
    values = [v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)]
    assert all(v.startswith("lifecycle.") for v in values)
    assert len(values) == len(set(values)) + 1  # MODEL and MODEL_RESOURCE: a tag and an event resource prefix


def test_no_stage_module_imports_another_stage() -> None:
    """Constants live next to the library code that owns them; a stage never imports another stage's module."""
    stages = {f"tasks.{name}" for name in GRAPH.names}
    for stage in stages:
        tree = ast.parse((ROOT / "tasks" / f"{stage.split('.')[1]}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not (imported & stages) - {stage}, stage
