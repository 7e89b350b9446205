"""The served requests of a time window, read from the MLflow traces `lifecycle serve` writes (one per
completion: lifecycle/serve/tracing.py): the question as retrieval searched it, the version that answered,
when, and the trace id.

    requests = read_window(experiment_id, since_ms, until_ms)     # oldest first
    requests[0].prompt, requests[0].model                         # "What does json.dumps do?", "lifecycle-gpt/3"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow

from lifecycle import names


@dataclass(frozen=True)
class Request:
    trace_id: str
    at_ms: int  # when the request came in (the trace's start)
    model: str  # NAME/VERSION that answered ("" when the trace does not say)
    prompt: str  # the question retrieval searched with (else the last user message)


def prompt_of(trace: Any) -> str:
    """The retrieve span's query: what the question was once the chat was reduced to it; a trace without one
    (retrieval failed before the span, or an older server) falls back to the last user message."""
    for span in trace.data.spans:
        if span.name == "retrieve" and isinstance(span.inputs, dict) and span.inputs.get("query"):
            return str(span.inputs["query"])
    root = next((s for s in trace.data.spans if s.parent_id is None), None)
    messages = root.inputs.get("messages", []) if root is not None and isinstance(root.inputs, dict) else []
    users = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users else ""


def read_window(experiment_id: str, since_ms: int, until_ms: int) -> list[Request]:
    """Every completion traced in [since_ms, until_ms) with a question, oldest first (this process's queued
    traces are flushed first)."""
    traces = mlflow.search_traces(locations=[experiment_id], return_type="list", include_spans=True, flush=True,
                                  filter_string=f"trace.timestamp_ms >= {since_ms} AND trace.timestamp_ms < {until_ms}")
    found = [Request(t.info.trace_id, int(t.info.request_time), t.info.tags.get(names.MODEL, ""), prompt_of(t))
             for t in traces]
    return sorted((r for r in found if r.prompt.strip()), key=lambda r: r.at_ms)
