"""Prefect tasks: one module per stage (`tasks/<stage>.py`: its graph node `STAGE` beside its work), the
stage runtime that runs any of them (common.py, context.py, launch.py, retries.py) and the graph assembled
from them (graph.py)."""

from __future__ import annotations

from pathlib import Path

from lifecycle.config import SECTIONS


def stage_names() -> tuple[str, ...]:
    """The stages in pipeline order, without importing them (or Prefect): the config sections that have a
    `tasks/<section>.py`."""
    here = Path(__file__).resolve().parent
    return tuple(section for section in SECTIONS if (here / f"{section}.py").is_file())
