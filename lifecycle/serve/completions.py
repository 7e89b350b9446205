"""A chat completion from request to answer: validate, retrieve from the served version's own index, fit the
prompt, generate (plain or streamed as server-sent events), trace it all in MLflow, and keep the answer in
memory for a while so that feedback can name it by id.

    chat = Completions(models, cfg.serve, experiment_id, ServeMetrics(models))
    chat.complete(body, sticky)   # (the chat.completion dict (+ sources, trace_id), the Served that answered)
    chat.stream(body, sticky)     # (an iterator of 'data: {...}\\n\\n' events ending with 'data: [DONE]', Served)
    chat.recall("chatcmpl-...")   # the Answered it produced, while it is among the last recent_answers
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mlflow.entities import SpanType

from lifecycle import names
from lifecycle.config.serve import ServeConfig
from lifecycle.errors import LifecycleError
from lifecycle.preferences.feedback import Answered
from lifecycle.rag.answer import fit_prompt
from lifecycle.rag.search import Hit
from lifecycle.serve import api
from lifecycle.serve.generation import Sampling, TextStream, token_budget
from lifecycle.serve.metrics import ServeMetrics
from lifecycle.serve.models import Served, ServedModels
from lifecycle.serve.tracing import RequestTrace, hits_output

log = logging.getLogger("lifecycle.serve")


@dataclass
class Prepared:
    """A request ready to generate: its model, question, prompt and the trace it is recorded in."""

    cid: str
    created: int
    served: Served
    question: str
    ids: list[int]
    max_new: int
    used: list[Hit]
    trace: RequestTrace

    def extra(self) -> dict[str, Any]:
        return {"sources": api.sources(self.used), "trace_id": self.trace.trace_id}


class Completions:
    def __init__(self, models: ServedModels, cfg: ServeConfig, experiment_id: str | None,
                 metrics: ServeMetrics) -> None:
        self.models, self.cfg, self.metrics = models, cfg, metrics
        self.experiment_id = experiment_id if cfg.server.trace else None
        self._recent: OrderedDict[str, Answered] = OrderedDict()
        self._lock = threading.Lock()

    def recall(self, cid: str) -> Answered | None:
        with self._lock:
            return self._recent.get(cid)

    def _remember(self, answered: Answered) -> None:
        with self._lock:
            self._recent[answered.id] = answered
            while len(self._recent) > self.cfg.server.recent_answers:
                self._recent.popitem(last=False)

    def prepare(self, body: api.ChatRequest, sticky: str) -> Prepared:
        try:
            served = self.models.route(body.model, sticky, self.cfg.traffic.challenger_share)
        except KeyError as err:
            raise api.ApiError(404, str(err.args[0]), "model", "model_not_found") from None
        question, system = api.read_messages(body.messages, self.cfg.answer.system_prompt,
                                             self.cfg.server.max_prompt_chars)
        try:
            window, max_new = token_budget(served, question, system, self.cfg.answer.max_new_tokens, body.limit)
        except LifecycleError as err:
            raise api.ApiError(400, str(err), "max_tokens" if body.limit else "messages",
                               "context_length_exceeded") from None
        inputs = {"messages": [m.model_dump() for m in body.messages], "model": body.model,
                  "max_tokens": body.limit, "stream": body.stream, "temperature": body.temperature}
        trace = RequestTrace.start(self.experiment_id, inputs, {names.MODEL: str(served.ref),
                                                                names.ALIAS: served.served_as})
        k = self.cfg.answer.top_k
        span = trace.span("retrieve", SpanType.RETRIEVER, {"query": question, "k": k})
        try:
            hits = served.retriever.search(question, k=k)
            trace.end(span, hits_output(hits), {"retrieved": len(hits)})
            ids, used, truncated = fit_prompt(served.tokenizer, question, hits, system, window - max_new)
        except Exception as err:
            trace.end(span, None, error=err)
            trace.finish({}, err)
            raise
        if len(used) < len(hits):
            log.info("%d of %d retrieved chunks fit the model's %d-token context", len(used), len(hits), window)
        return Prepared(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), served, question, ids, max_new, used,
                        trace)

    def _generate(self, p: Prepared, body: api.ChatRequest) -> tuple[TextStream, Any]:
        sampling = Sampling(body.temperature, body.top_p, body.seed)
        span = p.trace.span("generate", SpanType.LLM, {
            "prompt": p.served.tokenizer.decode(p.ids), "prompt_tokens": len(p.ids), "max_tokens": p.max_new,
            "model": str(p.served.ref), "temperature": sampling.temperature or 0.0})
        return TextStream(p.served, p.ids, p.max_new, sampling), span

    def _finish(self, p: Prepared, stream: TextStream, span: Any, error: BaseException | None = None) -> None:
        rate = stream.tokens / stream.seconds if stream.seconds > 0 else 0.0
        p.trace.end(span, {"answer": stream.text, "tokens": stream.tokens, "tokens_per_s": round(rate, 2),
                           "finish_reason": stream.finish_reason}, {"seconds": round(stream.seconds, 4)}, error)
        p.trace.finish({"answer": stream.text, "sources": [h.title for h in p.used]}, error)
        self.metrics.answered(p.served, stream, failed=error is not None)
        if error is None:
            self._remember(Answered(p.cid, p.question, stream.text, str(p.served.ref), p.served.alias,
                                    p.trace.trace_id, api.sources(p.used)))
        log.info("%s answered %s in %.2f s (%d tokens%s)", p.served.ref, p.cid, stream.seconds, stream.tokens,
                 f", failed: {error}" if error else "")

    def complete(self, body: api.ChatRequest, sticky: str = "") -> tuple[dict[str, Any], Served]:
        p = self.prepare(body, sticky)
        stream, span = self._generate(p, body)
        try:
            text = "".join(stream)
        except Exception as err:
            self._finish(p, stream, span, err)
            raise
        self._finish(p, stream, span)
        return api.completion(p.cid, p.created, str(p.served.ref), text, stream.finish_reason,
                              api.usage(len(p.ids), stream.tokens), p.extra()), p.served

    def stream(self, body: api.ChatRequest, sticky: str = "") -> tuple[Iterator[str], Served]:
        """Validated and retrieved now (errors are plain responses); the events are generated as read."""
        p = self.prepare(body, sticky)
        stream, span = self._generate(p, body)
        return self._events(p, body, stream, span), p.served

    def _events(self, p: Prepared, body: api.ChatRequest, stream: TextStream, span: Any) -> Iterator[str]:
        model, pieces, error = str(p.served.ref), iter(stream), None
        try:
            yield api.sse(api.chunk(p.cid, p.created, model, {"role": "assistant", "content": ""}, **p.extra()))
            for piece in pieces:
                yield api.sse(api.chunk(p.cid, p.created, model, {"content": piece}))
            yield api.sse(api.chunk(p.cid, p.created, model, {}, stream.finish_reason))
            if body.include_usage:
                yield api.sse(api.chunk(p.cid, p.created, model, None, usage=api.usage(len(p.ids), stream.tokens)))
            yield api.DONE
        except Exception as err:  # noqa: BLE001 - the status line is sent: the error goes in the stream
            error = err
            log.exception("generation failed for %s", p.cid)
            yield api.sse(api.error_body(500, f"generation failed: {type(err).__name__}", code="server_error"))
        finally:
            pieces.close()  # type: ignore[attr-defined] - a generator: stops generation when the client left
            self._finish(p, stream, span, error)
