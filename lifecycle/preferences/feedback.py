"""Feedback from the chat page of `lifecycle serve`, stored in the preference store as a batch source for
the next round of preferences.

- A comparison (champion and challenger answering the same question side by side, shown in a random
  order) becomes an item of the open batch `feedback-<chat model name>` (source "feedback", created on
  first use) with one vote by the chat page's annotator (non-synthetic, cannot sign in); the item's meta
  records the origin ("chat"), the model versions, the side shown left, the trace ids and the time.
- A rating (+1 / -1 on one answer) is a row of `ratings`. Ratings turn into pairs when one prompt has an
  up-rated and a down-rated answer (each answer's ratings summed; a net zero is neither).

    record_comparison(store, feedback_id, "chat", a, b, left="b", choice="a", name="lifecycle-gpt")
    record_rating(store, feedback_id, "chat", answer, score=-1)          # "created" | "replayed"
    rows = feedback_rows(store)       # TRL rows (source "feedback"), ties dropped, sorted by item_id
    feedback_digest(store)            # sha256 of those rows as a snapshot; "none" when there are none
    feedback_by_version(store, "lifecycle-gpt")["lifecycle-gpt/3"].against("lifecycle-gpt/2")   # won, lost, tie

The feedback id is made by the client once per judgement, so a retried submission is recognised.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import product
from typing import Any

from sqlalchemy import Connection, func, literal, select, union_all
from sqlalchemy.orm import Session

from lifecycle.preferences.assign import VoteRefused
from lifecycle.preferences.db import read, write
from lifecycle.preferences.export import VotedItem, export_rows, pairs_to_rows, snapshot_bytes
from lifecycle.preferences.importers import PreferencePair
from lifecycle.preferences.schema import Assignment, Batch, Item, Rating, Vote
from lifecycle.preferences.stats import CHOICES
from lifecycle.preferences.store import PreferenceStore

ORIGIN = "chat"
SOURCE = "feedback"


class FeedbackRefused(VoteRefused):
    """Feedback the store will not take; `status` is the HTTP status the server answers with."""


@dataclass(frozen=True)
class Answered:
    """One answer the server gave, as feedback refers to it."""

    id: str  # the completion id (chatcmpl-...)
    question: str
    text: str
    model: str  # the registry reference that answered, NAME/VERSION
    alias: str = ""  # the alias it was served under (champion | challenger), if any
    trace_id: str | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def prompt(self) -> str:
        """The prompt as the preference set holds it: the question as one user message (JSON)."""
        return json.dumps([{"role": "user", "content": self.question}])


def feedback_batch_id(name: str) -> str:
    return f"{SOURCE}-{name}"[:64]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _batch(s: Session, name: str) -> str:
    batch_id = feedback_batch_id(name)
    if s.get(Batch, batch_id) is None:
        s.add(Batch(id=batch_id, source=SOURCE, model=name, votes_per_item=1, min_agreement=0.0))
        s.flush()
    return batch_id


def record_comparison(store: PreferenceStore, feedback_id: str, annotator: str, a: Answered, b: Answered, left: str,
                      choice: str, name: str) -> str:
    """Store "a vs b" as an item of the feedback batch of `name` with one vote (`choice` a | b | tie; `left`
    the answer shown on the left). Returns "created", or "replayed" for a feedback id already recorded."""
    if choice not in CHOICES or left not in ("a", "b"):
        raise FeedbackRefused(f"choice {choice!r} / left {left!r}: expected choice a|b|tie and left a|b", 422)
    if a.question != b.question:
        raise FeedbackRefused("the two answers compared answer different questions", 422)
    item_id = f"fb-{_sha(json.dumps([feedback_id, a.prompt, a.text, b.text]))[:40]}"  # a replay: the same id
    annotator_id = store.tokenless_annotator(annotator, synthetic=False)  # people judged
    with write(store.engine) as s:
        vote = s.get(Vote, feedback_id)
        if vote is not None:
            if vote.item_id != item_id:
                raise FeedbackRefused(f"feedback id {feedback_id} was already used for other feedback")
            return "replayed"
        batch_id = _batch(s, name)
        position = s.scalar(select(func.count()).select_from(Item).where(Item.batch_id == batch_id)) or 0
        meta = {"origin": ORIGIN, "models": [a.model, b.model], "aliases": [a.alias, b.alias], "left": left,
                "trace_ids": [a.trace_id, b.trace_id], "completion_ids": [a.id, b.id], "at": _now()}
        s.add(Item(id=item_id, batch_id=batch_id, position=position, prompt=a.prompt, prompt_id=_sha(a.prompt)[:32],
                   response_a=a.text, response_b=b.text, response_a_id=_sha(a.prompt + a.text)[:32],
                   response_b_id=_sha(a.prompt + b.text)[:32], gold=None, meta=json.dumps(meta)))
        s.flush()
        s.add(Assignment(item_id=item_id, annotator_id=annotator_id, left=left))
        s.add(Vote(id=feedback_id, item_id=item_id, annotator_id=annotator_id, choice=choice, left=left,
                   synthetic=False))
    return "created"


def record_rating(store: PreferenceStore, feedback_id: str, annotator: str, answer: Answered, score: int) -> str:
    """Store a +1 / -1 on one answer. Returns "created", or "replayed" for a feedback id already recorded."""
    if score not in (1, -1):
        raise FeedbackRefused(f"score {score!r}: expected 1 or -1", 422)
    annotator_id = store.tokenless_annotator(annotator, synthetic=False)
    with write(store.engine) as s:
        found = s.get(Rating, feedback_id)
        if found is not None:
            if (found.answer, found.score, found.model) != (answer.text, score, answer.model):
                raise FeedbackRefused(f"feedback id {feedback_id} was already used for other feedback")
            return "replayed"
        meta = {"origin": ORIGIN, "alias": answer.alias, "trace_id": answer.trace_id, "completion_id": answer.id,
                "sources": answer.sources, "at": _now()}
        s.add(Rating(id=feedback_id, model=answer.model, prompt=answer.prompt, prompt_id=_sha(answer.prompt)[:32],
                     answer=answer.text, score=score, annotator_id=annotator_id, meta=json.dumps(meta)))
    return "created"


def _query(c: Connection) -> list[Any]:
    """Every feedback vote and every rating, in one statement."""
    votes = (select(literal("vote").label("kind"), Item.id.label("id"), Item.prompt.label("prompt"),
                    Item.response_a.label("a"), Item.response_b.label("b"), Vote.choice.label("choice"),
                    literal(0).label("score"))
             .join(Vote, Vote.item_id == Item.id).join(Batch, Batch.id == Item.batch_id)
             .where(Batch.source == SOURCE, Item.gold.is_(None)))
    ratings = select(literal("rating"), Rating.id, Rating.prompt, Rating.answer, literal(""), literal(""),
                     Rating.score)
    return list(c.execute(union_all(votes, ratings)).all())


def _rating_pairs(ratings: list[Any]) -> list[PreferencePair]:
    """Per prompt, every answer rated up (net) over every answer rated down (net)."""
    net: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in ratings:
        net[r.prompt][r.a] += r.score
    pairs = []
    for prompt in sorted(net):
        ups = sorted(t for t, n in net[prompt].items() if n > 0)
        downs = sorted(t for t, n in net[prompt].items() if n < 0)
        messages = tuple(json.loads(prompt))
        pairs += [PreferencePair(messages, up, down, origin=ORIGIN) for up, down in product(ups, downs)]
    return pairs


def feedback_rows(store: PreferenceStore) -> list[dict[str, Any]]:
    """The chat page's feedback as TRL preference rows (source "feedback", the same columns as the exported
    preference set): compared items by their votes' majority (ties dropped), plus rating pairs; sorted by
    item_id."""
    with read(store.engine) as s:
        found = _query(s.connection())
    votes: dict[str, list[str]] = defaultdict(list)
    items: dict[str, Any] = {}
    for row in found:
        if row.kind == "vote":
            votes[row.id].append(row.choice)
            items[row.id] = row
    voted = [VotedItem(item_id=i, prompt=tuple(json.loads(r.prompt)), response_a=r.a, response_b=r.b,
                       votes=tuple(votes[i]), source=SOURCE) for i, r in items.items()]
    rows = export_rows(voted, ties="drop", min_agreement=0.0, min_votes=1)[0] if voted else []
    rows += pairs_to_rows(_rating_pairs([r for r in found if r.kind == "rating"]), source=SOURCE)
    return sorted(rows, key=lambda r: r["item_id"])


def feedback_digest(store: PreferenceStore) -> str:
    """A content hash of feedback_rows (the sha256 of their snapshot bytes); "none" when there are none."""
    rows = feedback_rows(store)
    return hashlib.sha256(snapshot_bytes(rows)).hexdigest() if rows else "none"


@dataclass(frozen=True)
class VersionFeedback:
    """What the chat page's people said about one served version: thumbs, and side-by-side results against each
    version it was compared with (ties as such)."""

    up: int = 0
    down: int = 0
    compared: dict[str, dict[str, int]] = field(default_factory=dict)  # other version -> {won, lost, tie}

    def against(self, other: str) -> dict[str, int]:
        return {"won": 0, "lost": 0, "tie": 0} | self.compared.get(other, {})


def feedback_by_version(store: PreferenceStore, name: str) -> dict[str, VersionFeedback]:
    """Per version (NAME/VERSION) of `name`: its ratings and its comparisons in the batch `feedback-<name>`."""
    thumbs: dict[str, dict[int, int]] = defaultdict(lambda: {1: 0, -1: 0})
    compared: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: {"won": 0, "lost": 0,
                                                                                             "tie": 0}))
    with read(store.engine) as s:
        for model, score, count in s.execute(select(Rating.model, Rating.score, func.count())
                                              .where(Rating.model.startswith(f"{name}/"))
                                              .group_by(Rating.model, Rating.score)):
            thumbs[model][score] += count
        votes = s.execute(select(Item.meta, Vote.choice).join(Vote, Vote.item_id == Item.id)
                          .where(Item.batch_id == feedback_batch_id(name), Item.gold.is_(None)))
        for meta, choice in votes:
            a, b = json.loads(meta)["models"]
            for me, other, letter in ((a, b, "a"), (b, a, "b")):
                compared[me][other]["tie" if choice == "tie" else "won" if choice == letter else "lost"] += 1
    return {v: VersionFeedback(thumbs[v][1], thumbs[v][-1], {o: dict(t) for o, t in compared[v].items()})
            for v in sorted(set(thumbs) | set(compared))}
