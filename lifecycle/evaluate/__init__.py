"""Evaluation: metrics, intervals, the report card and the promotion gate. `evaluation.json` (EVALUATION) is
what the evaluate stage writes and the promote stage's gate reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lifecycle.errors import LifecycleError

EVALUATION = "evaluation.json"


def read_evaluation(folder: str | Path) -> dict[str, Any]:
    """The evaluation an evaluate stage output holds."""
    path = Path(folder) / EVALUATION
    if not path.is_file():
        raise LifecycleError(f"{path} is missing: re-run evaluate (`lifecycle run --from evaluate`)")
    return json.loads(path.read_text())
