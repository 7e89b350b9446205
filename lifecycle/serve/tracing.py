"""One MLflow trace per completion request, in the run's experiment: a root span `chat.completions` with a
`retrieve` span (the query, k, and the hits: titles, chunk ids, scores) and a `generate` span (prompt tokens,
max tokens; the answer, tokens and tokens/s). Spans are made without MLflow's thread context, because a
streamed answer is generated in one thread and finished in others.

    trace = RequestTrace.start(experiment_id, {"messages": [...]}, {"lifecycle.model": "lifecycle-gpt/3"})
    span = trace.span("retrieve", SpanType.RETRIEVER, {"query": q, "k": 4}); trace.end(span, hits_output(hits))
    trace.finish({"answer": text}); trace.trace_id             # "tr-..." (None when tracing is off)

Tracing never fails a request: without an experiment id every call is a no-op, and MLflow itself turns
export errors into log lines.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from mlflow.entities import AssessmentSource, SpanType

from lifecycle import names
from lifecycle.rag.search import Hit

log = logging.getLogger("lifecycle.serve")


class RequestTrace:
    def __init__(self, root: Any | None) -> None:
        self.root = root

    @classmethod
    def start(cls, experiment_id: str | None, inputs: dict[str, Any], tags: dict[str, str]) -> RequestTrace:
        if experiment_id is None:
            return cls(None)
        root = mlflow.start_span_no_context("chat.completions", span_type=SpanType.CHAT_MODEL, inputs=inputs,
                                            experiment_id=experiment_id, tags=tags)
        return cls(root)

    @property
    def trace_id(self) -> str | None:
        return getattr(self.root, "trace_id", None) if self.root is not None else None

    def span(self, name: str, span_type: str, inputs: dict[str, Any]) -> Any:
        """A child span of the request, open until `end` (a no-op object when tracing is off)."""
        if self.root is None:
            return None
        return mlflow.start_span_no_context(name, span_type=span_type, parent_span=self.root, inputs=inputs)

    @staticmethod
    def end(span: Any, outputs: Any, attributes: dict[str, Any] | None = None,
            error: BaseException | None = None) -> None:
        if span is None:
            return
        if error is not None:
            attributes = {**(attributes or {}), "error": f"{type(error).__name__}: {error}"}
        span.end(outputs=outputs, attributes=attributes, status="ERROR" if error is not None else None)

    def finish(self, outputs: dict[str, Any], error: BaseException | None = None) -> None:
        self.end(self.root, outputs, error=error)


def hits_output(hits: list[Hit]) -> list[dict[str, Any]]:
    """Hits as MLflow's retriever spans show documents: content, id and metadata."""
    return [{"page_content": h.text, "id": h.chunk_id,
             "metadata": {"title": h.title, "path": h.path, "source": h.source, "score": h.score}} for h in hits]


def log_rating(trace_id: str | None, name: str, value: Any, annotator: str) -> None:
    """Attach a person's judgement to the trace of the answer (shown with it in the MLflow UI)."""
    if not trace_id:
        return
    try:
        mlflow.log_feedback(trace_id=trace_id, name=name, value=value,
                            source=AssessmentSource(source_type="HUMAN", source_id=annotator))
    except Exception:  # noqa: BLE001 - the preference store has it; the trace is a convenience
        log.warning("could not attach feedback to trace %s", trace_id, exc_info=True)


def answers_by_version(experiment_id: str, versions: list[str]) -> dict[str, int]:
    """How many completions each version (NAME/VERSION) answered: its traces in the experiment (MLflow has no
    count: their infos are read, without spans; this process's queued traces are flushed first)."""
    return {v: len(mlflow.search_traces(locations=[experiment_id], filter_string=f"tag.`{names.MODEL}` = '{v}'",
                                        return_type="list", include_spans=False, flush=True)) for v in versions}
