"""docs/ARCHITECTURE.md stays true: its diagram is the graph's (`lifecycle stages --mermaid`), and its table of
where each stage's code lives names every stage once, with library code that stage really runs (its
computed code closure)."""

from __future__ import annotations

import re
from pathlib import Path

from lifecycle.hashing import code_closure
from tasks.graph import GRAPH

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def test_the_diagram_is_the_graph() -> None:
    drawn = re.search(r"```mermaid\n(.*?)\n```", DOC, re.S)
    assert drawn and drawn.group(1) == GRAPH.mermaid(), "paste `lifecycle stages --mermaid` into the diagram"


def table_rows() -> dict[str, str]:
    section = DOC[DOC.index("### Where each stage's code lives"):DOC.index("## How the pieces fit")]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): cells[1] for cells in rows[1:]}


def modules_named(cell: str) -> list[str]:
    """`lifecycle/rag/` (`chunk.py`, ...) and `lifecycle/align/sft.py`, `sft_data.py` as module names: a bare
    file name belongs to the folder last named before it."""
    found, folder = [], ""
    for item in re.findall(r"`([^`]+)`", cell):
        if "/" in item:
            folder = item if item.endswith("/") else item.rsplit("/", 1)[0] + "/"
            if item.endswith("/"):
                continue
            item = item.rsplit("/", 1)[1]
        found.append((folder + item).removesuffix(".py").replace("/", "."))
    return found


def test_the_table_names_every_stage_with_code_it_runs() -> None:
    rows = table_rows()
    assert list(rows) == list(GRAPH.names)
    for stage, cell in rows.items():
        closure = set(code_closure(f"tasks.{stage}"))
        named = modules_named(cell)
        assert named, stage
        assert not [m for m in named if m not in closure], f"{stage}: not code it runs"
