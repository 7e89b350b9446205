"""docs/RELIABILITY.md names, for every row, the tests that show it: each named test exists (a renamed or
deleted test fails here, so the table cannot drift from what CI runs)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMED = re.compile(r"`(tests/[\w/]+\.py)?::(test_\w+)`")


def test_every_row_names_tests_that_exist() -> None:
    rows = [line for line in (ROOT / "docs" / "RELIABILITY.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith(("| fault |", "| input |"))]
    assert len(rows) > 50
    missing, current = [], None
    for row in rows:
        found = NAMED.findall(row)
        assert found or "same test" in row, f"a row without a test: {row[:100]}"
        for path, name in found:
            current = path or current  # `::name` continues the file named before it
            assert current, row[:100]
            tree = ast.parse((ROOT / current).read_text())
            if name not in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}:
                missing.append(f"{current}::{name}")
    assert missing == []
