"""The monitor's report: Evidently's data drift preset over the window's questions against the reference
questions (the text itself, its length in words, the best chunk's score, the embedding), saved as HTML; and
the summary of figures against thresholds as markdown (the Prefect artifact, `lifecycle monitor`).

    save_evidently_report(current, reference, Path("drift_report.html"))
    summary_markdown(crossed_rows, feedback_rows, window)

Evidently is imported here only, with its telemetry off (DO_NOT_TRACK); nothing it loads downloads at run time
(no nltk descriptors).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from lifecycle.monitor.drift import Sample


def _import_evidently() -> Any:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    import pandas.core.dtypes.common as dtypes

    if not hasattr(dtypes, "infer_dtype_from_object"):  # pandas 3.1 removed it; evidently 0.7.23 imports it (for a
        dtypes.infer_dtype_from_object = lambda dtype: pd.api.types.pandas_dtype(dtype).type  # legacy test only)
    import evidently

    return evidently


def _frame(sample: Sample) -> pd.DataFrame:
    frame = pd.DataFrame(sample.vectors, columns=[f"e{i}" for i in range(sample.vectors.shape[1])])
    return frame.assign(prompt=sample.prompts, length=sample.lengths(), best_score=sample.best_scores)


def save_evidently_report(current: Sample, reference: Sample, path: Path) -> None:
    evidently = _import_evidently()
    from evidently.metrics import EmbeddingsDrift
    from evidently.presets import DataDriftPreset

    columns = [f"e{i}" for i in range(current.vectors.shape[1])]
    definition = evidently.DataDefinition(text_columns=["prompt"], numerical_columns=["length", "best_score"],
                                          embeddings={"question": columns})
    report = evidently.Report([DataDriftPreset(columns=["prompt", "length", "best_score"]),
                               EmbeddingsDrift(embeddings_name="question")])
    snapshot = report.run(evidently.Dataset.from_pandas(_frame(current), data_definition=definition),
                          evidently.Dataset.from_pandas(_frame(reference), data_definition=definition))
    snapshot.save_html(str(path))


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def summary_markdown(crossed: list[dict[str, Any]], feedback: list[dict[str, Any]], window: dict[str, Any],
                     figures: dict[str, float]) -> str:
    lines = [f"## Served questions, {window['since']} to {window['until']} ({window['requests']} requests)", "",
             "| figure | value | threshold | crossed |", "|---|---|---|---|"]
    lines += [f"| {c['figure']} | {_number(c['value'])} | {c['op']} {_number(c['threshold'])} | "
              f"{'**yes**' if c['crossed'] else 'no'} |" for c in crossed]
    shown = {c["figure"] for c in crossed}
    lines += [f"| {name} | {_number(value)} | | |" for name, value in figures.items() if name not in shown]
    if feedback:
        lines += ["", "| version | thumbs up | thumbs down | negative share [95% interval] | degraded |",
                  "|---|---|---|---|---|"]
        lines += [f"| {f['version']} | {f['up']} | {f['down']} | {_number(f['negative_share'])} "
                  f"[{_number(f['low'])}, {_number(f['high'])}] | "
                  f"{'**yes**' if f['degraded'] else 'no' if f['judged'] else 'too few ratings'} |" for f in feedback]
    return "\n".join(lines)
