"""The annotation app's JSON shapes (pydantic models shown at /docs) and small helpers to fill them.

    VoteIn = vote_model(max_reason_chars)        # the vote body, with the configured reason limit
    api.item_out(shown), api.batch_out(batch, progress), number(0.4567) == "0.457"
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.responses import Response

from lifecycle.preferences.assign import Shown
from lifecycle.preferences.schema import Batch
from lifecycle.preferences.store import Progress

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
DESCRIPTION = """Pairwise preference votes for the RLHF stage of llm-lifecycle.

Authenticate with `Authorization: Bearer <token>` (a token from `lifecycle annotators add NAME`); the web
page uses a session cookie plus an `X-CSRF-Token` header instead. Loop: `GET /api/next` gives an item (the
same one until you vote on it) with the two responses in the order you should show them (`left`, `right`);
`POST /api/votes` with a fresh UUID as `vote_id` records the vote. Retrying a POST with the same `vote_id`
is safe: it answers `replayed` and the vote counts once. Each token (or session) has a request rate
limit: over it, 429 with a `Retry-After` header in seconds."""


class Problem(BaseModel):
    detail: str = Field(description="what was wrong, in words")


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "not signed in"},
    429: {"model": Problem, "description": "over annotate.rate_limit_per_minute: retry after Retry-After seconds"},
}
VOTE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    403: {"model": Problem, "description": "the item is not assigned to you, a cross-origin request, or a "
                                           "cookie request without its CSRF token"},
    409: {"model": Problem, "description": "you already voted on it, it has its votes, or its batch is closed"},
    413: {"model": Problem, "description": "request body over annotate.max_body_bytes"},
}


class Health(BaseModel):
    status: Literal["ok"]


class MessageOut(BaseModel):
    role: str = Field(description="system | user | assistant")
    content: str


class ItemOut(BaseModel):
    item_id: str
    batch_id: str
    prompt: list[MessageOut] = Field(description="the conversation both responses answer, in order")
    left: str = Field(description="the response to show on the left (choice `left`, button A)")
    right: str = Field(description="the response to show on the right (choice `right`, button B)")


class ProgressOut(BaseModel):
    your_votes: int = Field(description="votes you have cast, over every batch")
    batch_id: str | None = Field(None, description="the batch of the item shown (else the newest open batch)")
    status: str | None = Field(None, description="open | complete | exported")
    items: int = Field(0, description="items in the batch (gold items not counted)")
    items_left: int = Field(0, description="items still short of their votes")
    votes: int = Field(0, description="votes on the batch's items so far")
    quota: int = Field(0, description="votes the batch needs: items x votes per item")


class NextOut(BaseModel):
    item: ItemOut | None = Field(description="null: nothing is left for you to judge")
    progress: ProgressOut


class VoteBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vote_id: str = Field(pattern=UUID_PATTERN, description="a UUID made by the client once per item shown; "
                                                           "send the same one when retrying")
    item_id: str = Field(min_length=1, max_length=64)
    choice: Literal["left", "right", "tie"] = Field(description="as shown: left (A), right (B) or tie")
    reason: str | None = None


def vote_model(max_reason_chars: int) -> type[VoteBase]:
    """The vote body with `reason` limited to `max_reason_chars` (from conf/annotate.yaml)."""
    reason = (str | None, Field(None, max_length=max_reason_chars, description="why, optional"))
    return create_model("VoteIn", __base__=VoteBase, reason=reason)


class VoteOut(BaseModel):
    status: Literal["created", "replayed"] = Field(description="replayed: this vote_id was already recorded")
    vote_id: str
    item_id: str


class BatchOut(BaseModel):
    id: str
    source: str = Field(description="human | simulated | feedback | evaluation")
    model: str | None = Field(description="the registry reference whose answers are compared")
    status: str
    created_at: str
    votes_per_item: int
    min_agreement: float
    items: int
    complete_items: int
    votes: int
    quota: int


class SummaryOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    batch_id: str
    status: str
    items: int
    votes: int
    quota: int
    complete_items: int
    quota_met: bool
    min_agreement: float
    agreement: float | None = Field(description="Krippendorff's alpha (nominal); null while undefined")
    agreement_met: bool
    stats: dict[str, Any] = Field(description="kappas, alpha, majority agreement, position and length bias, "
                                              "gold accuracy and contradictions per annotator")


def json_response(model: BaseModel) -> Response:
    """A ready response: FastAPI would validate a returned model again, in another trip to the threadpool."""
    return Response(model.model_dump_json(), media_type="application/json")


def item_out(shown: Shown) -> ItemOut:
    return ItemOut(item_id=shown.item_id, batch_id=shown.batch_id, left=shown.left, right=shown.right,
                   prompt=[MessageOut(role=str(m.get("role", "")), content=str(m.get("content", "")))
                           for m in shown.prompt])


def batch_out(batch: Batch, progress: Progress) -> BatchOut:
    return BatchOut(id=batch.id, source=batch.source, model=batch.model, status=progress.status,
                    created_at=batch.created_at.isoformat(timespec="seconds"), votes_per_item=batch.votes_per_item,
                    min_agreement=batch.min_agreement, items=progress.items, complete_items=progress.complete_items,
                    votes=progress.votes, quota=progress.quota)


def number(value: Any, digits: int = 3) -> str:
    """A statistic for people: None -> "n/a", floats rounded, ints with thousands separators."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def reference(spec: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document as the /docs page lists it: each endpoint with its parameters, request body
    and answers, then each schema with its fields."""
    endpoints = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            endpoints.append({"method": method.upper(), "path": path, "summary": op.get("summary", ""),
                              "description": op.get("description", ""), "body": _type(body),
                              "params": [(p["name"], p.get("in", ""), _type(p.get("schema", {})))
                                         for p in op.get("parameters", [])],
                              "responses": [(code, r.get("description", ""),
                                             _type(r.get("content", {}).get("application/json", {}).get("schema", {})))
                                            for code, r in op.get("responses", {}).items()]})
    schemas = [{"name": name, "fields": [(field, _type(prop), field in schema.get("required", []),
                                         prop.get("description", ""))
                                        for field, prop in schema.get("properties", {}).items()]}
               for name, schema in spec.get("components", {}).get("schemas", {}).items()]
    return {"title": spec.get("info", {}).get("title", ""), "description": spec.get("info", {}).get("description", ""),
            "endpoints": endpoints, "schemas": schemas}


def _type(schema: dict[str, Any]) -> str:
    """A schema in a few words: a $ref's name, a type (with its limits), or the alternatives."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if "enum" in schema:
        return " | ".join(map(str, schema["enum"]))
    limits = [f"{k} {schema[k]}" for k in ("maxLength", "pattern", "minimum", "maximum") if k in schema]
    return schema.get("type", "") + (f" ({', '.join(limits)})" if limits else "")
