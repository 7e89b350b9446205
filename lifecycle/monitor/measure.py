"""One monitoring pass over a window of served requests (window.py): the served index (the champion's, else
the latest), the reference questions (reference.py) embedded and searched with it like the window's, the
drift figures, crossed thresholds, drifted questions and per-version feedback (drift.py), and the report files
in `out` (report.py): drift_report.html, drifted_questions.jsonl ({"prompt": ...} lines, what
preferences.prompts.files reads), summary.md, monitor.json.

    outcome = measure_window(cfg, state_dir, requests, window, out)
    outcome.alarms, outcome.degraded, outcome.prompts_file
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle.config import Config
from lifecycle.errors import LifecycleError
from lifecycle.monitor.drift import Sample, crossings, drift_figures, drifted_questions, feedback_figures
from lifecycle.monitor.reference import reference_questions, reference_vocabulary
from lifecycle.monitor.report import save_evidently_report, summary_markdown
from lifecycle.monitor.window import Request

log = logging.getLogger("lifecycle.monitor")


@dataclass
class Outcome:
    window: dict[str, Any]  # since, until (ISO), hours, requests
    index: str = ""  # the index searched: uri#table@version
    figures: dict[str, float] = field(default_factory=dict)
    crossed: list[dict[str, Any]] = field(default_factory=list)  # every configured threshold with its figure
    feedback: list[dict[str, Any]] = field(default_factory=list)  # per version in the window
    drifted: list[dict[str, Any]] = field(default_factory=list)
    prompts_file: str | None = None  # drifted_questions.jsonl, when there are any
    summary: str = ""

    @property
    def alarms(self) -> list[dict[str, Any]]:
        return [c for c in self.crossed if c["crossed"]]

    @property
    def degraded(self) -> list[dict[str, Any]]:
        return [f for f in self.feedback if f["degraded"]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def served_index(cfg: Config, state_dir: Path) -> dict[str, Any]:
    """The index.json `lifecycle serve` answers with: the champion's paired index, else the latest build."""
    from lifecycle.rag.pairing import paired_index
    from lifecycle.rag.search import read_current
    from lifecycle.registry import CHAMPION, get_alias

    champion = get_alias(cfg.run.models.chat, CHAMPION)
    return (paired_index(state_dir, champion) if champion else None) or read_current(state_dir)


def searched(retriever: Any, prompts: list[str]) -> Sample:
    """The prompts embedded with the index's model, and each one's best chunk by exact dense search: a cosine
    similarity whatever serve.search.mode is (a fused hybrid score is relative to its own result list)."""
    vectors = retriever.embedder.embed(prompts, desc="monitor embed")
    best = [hits[0].score if (hits := retriever.dense(v, 1, exact=True)) else -1.0 for v in vectors]
    return Sample(prompts, vectors, np.array(best, dtype=np.float64))


def thumbs_by_version(cfg: Config, state_dir: Path, versions: list[str]) -> dict[str, tuple[int, int]]:
    from lifecycle.preferences.db import store_url
    from lifecycle.preferences.feedback import feedback_by_version
    from lifecycle.preferences.store import PreferenceStore

    found = feedback_by_version(PreferenceStore.open(store_url(cfg.annotate.store_url, state_dir)),
                                cfg.run.models.chat)
    return {v: (found[v].up, found[v].down) if v in found else (0, 0) for v in versions}


def measure_window(cfg: Config, state_dir: Path, requests: list[Request], window: dict[str, Any],
                   out: Path) -> Outcome:
    from lifecycle.rag.search import open_index

    mon = cfg.monitor
    outcome = Outcome(window=window)
    if len(requests) < mon.min_requests:
        outcome.summary = (f"{len(requests)} requests from {window['since']} to {window['until']}: fewer than "
                           f"monitor.min_requests ({mon.min_requests}), nothing measured")
        return outcome
    info = served_index(cfg, state_dir)
    outcome.index = f"{info['uri']}#{info['table']}@{info['version']}"
    retriever = open_index(info, cfg.serve.search)
    questions = reference_questions(retriever.tbl, cfg.sft.data, mon.reference.max_questions)
    if not questions:
        raise LifecycleError(f"monitor: no reference questions in the index {outcome.index} (no python-docs objects) "
                             "nor in sft.data.files")
    evaluation = sum(q.role == "evaluation" for q in questions)
    log.info("monitor: %d requests against %d reference questions (%d evaluation, %d training), index %s",
             len(requests), len(questions), evaluation, len(questions) - evaluation, outcome.index)
    reference = searched(retriever, [q.text for q in questions])
    current = searched(retriever, [r.prompt for r in requests])
    vocabulary = reference_vocabulary(retriever.tbl, questions, mon.reference.vocabulary_chunks)
    outcome.figures = drift_figures(current, reference, vocabulary, mon.low_score, mon.novel_similarity)
    outcome.crossed = crossings(outcome.figures, mon.thresholds)
    outcome.drifted = drifted_questions(current, reference, mon.low_score, mon.novel_similarity,
                                        mon.collect_preferences.max_prompts)
    versions = sorted({r.model for r in requests if r.model})
    outcome.feedback = feedback_figures(thumbs_by_version(cfg, state_dir, versions), mon.feedback)
    write_files(outcome, current, reference, out)
    return outcome


def write_files(outcome: Outcome, current: Sample, reference: Sample, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_evidently_report(current, reference, out / "drift_report.html")
    if outcome.drifted:
        path = out / "drifted_questions.jsonl"
        path.write_text("".join(json.dumps({"prompt": q["prompt"]}) + "\n" for q in outcome.drifted))
        outcome.prompts_file = str(path.resolve())
    outcome.summary = summary_markdown(outcome.crossed, outcome.feedback, outcome.window, outcome.figures)
    (out / "summary.md").write_text(outcome.summary + "\n")
    (out / "monitor.json").write_text(json.dumps(outcome.to_dict(), indent=2))
