"""The OpenAI shapes of the serving API (lifecycle/serve/app.py): request bodies, responses, stream chunks
and errors, plus the feedback body of the chat page.

    body = ChatRequest.model_validate(json)              # unknown OpenAI fields are accepted and ignored
    question, system = read_messages(body.messages, default_system, max_chars)   # ApiError 400 when unusable
    completion(cid, created, "lifecycle-gpt/3", text, "stop", usage, sources, trace_id)    # a dict
    sse(chunk(cid, created, model, {"content": "Hel"}))  # 'data: {...}\\n\\n'; the stream ends with DONE
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import Body
from pydantic import BaseModel, ConfigDict, Field

from lifecycle.preferences.api import UUID_PATTERN
from lifecycle.rag.search import Hit

DONE = "data: [DONE]\n\n"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error", 429: "requests", 503: "server_error"}  # 429: as OpenAI's rate limits


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[TextPart] | None = None


class ChatRequest(BaseModel):
    """POST /v1/chat/completions. The last user message is the question (answered with retrieval, one turn);
    the last system (or developer) message, if any, replaces the configured system prompt."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(None, max_length=256, description="NAME, NAME@champion, NAME@challenger or "
                                                                "NAME/VERSION of a served version")
    messages: list[ChatMessage]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0, le=2, description="0 or absent: greedy; above 0: sampled")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=1)
    user: str | None = Field(None, max_length=256, description="your end user's id: the canary keeps each user on "
                                                               "one version (serve.traffic)")

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


def _text(message: ChatMessage, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise ApiError(400, f"messages[{index}]: only text content is understood, not {part.type!r}",
                           f"messages[{index}].content")
        parts.append(part.text)
    return "\n".join(parts)


def read_messages(messages: list[ChatMessage], default_system: str | None, max_chars: int) -> tuple[str, str | None]:
    """(question, system prompt): the last user message and the last system/developer message."""
    if not messages:
        raise ApiError(400, "messages is empty: send at least one user message", "messages")
    users = [(i, m) for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        raise ApiError(400, "no user message: the last user message is the question", "messages")
    question = _text(users[-1][1], users[-1][0]).strip()
    if not question:
        raise ApiError(400, f"messages[{users[-1][0]}]: the question is empty", "messages")
    systems = [(i, m) for i, m in enumerate(messages) if m.role in ("system", "developer")]
    system = default_system
    if systems:
        system = _text(systems[-1][1], systems[-1][0]).strip() or None
    size = len(question) + len(system or "")
    if size > max_chars:
        raise ApiError(400, f"the question and system prompt are {size} characters, over the "
                            f"{max_chars} allowed (serve.server.max_prompt_chars)", "messages", "prompt_too_long")
    return question, system


def sources(hits: list[Hit]) -> list[dict[str, Any]]:
    return [{"title": h.title, "path": h.path, "source": h.source, "chunk_id": h.chunk_id, "score": h.score}
            for h in hits]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(cid: str, created: int, model: str, text: str, finish_reason: str, used: dict[str, int],
               extra: dict[str, Any]) -> dict[str, Any]:
    """A chat.completion; `extra` (sources, trace_id) rides along at the top level."""
    return {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason}], "usage": used, **extra}


def chunk(cid: str, created: int, model: str, delta: dict[str, Any] | None, finish_reason: str | None = None,
          **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish_reason}]
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
            **extra}


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "llm-lifecycle"}


class RatingIn(BaseModel):
    """A thumbs up (1) or down (-1) on one answer, named by its completion id."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["rating"]
    feedback_id: str = Field(pattern=UUID_PATTERN, description="a UUID made once per judgement (retries reuse it)")
    completion_id: str = Field(min_length=1, max_length=64)
    score: Literal[1, -1]


class CompareIn(BaseModel):
    """Two answers to one question as shown side by side, and which was better."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["compare"]
    feedback_id: str = Field(pattern=UUID_PATTERN)
    left: str = Field(min_length=1, max_length=64, description="completion id of the answer shown on the left")
    right: str = Field(min_length=1, max_length=64)
    choice: Literal["left", "right", "tie"]


Feedback = Annotated[RatingIn | CompareIn, Body(discriminator="kind")]  # POST /v1/feedback
