"""Who judges what: items are handed out so that each collects `votes_per_item` independent votes, nobody
sees an item twice, and gold items (known answers) are mixed in; votes are recorded idempotently.

    shown = next_item(store, annotator_id)            # None when nothing is left for this annotator
    submit_vote(store, vote_id, annotator_id, shown.item_id, "a", reason="")   # "created" | "replayed"

Assignment rules, in one serialised write transaction (BEGIN IMMEDIATE on SQLite, a row lock on the batch
on PostgreSQL), so concurrent annotators never over-fill an item:
- an annotator keeps the item they were given until they vote on it (a page reload shows the same item);
- every `gold_every`-th item is a gold item they have not seen, while there are any;
- otherwise the open human batch's item nearest its quota that they have never been shown, among items
  whose votes plus other annotators' unexpired assignments (`ttl`) are below the quota;
- the left/right order is drawn at random per assignment and recorded with the vote.
A vote counts only on an item assigned to the voter and not yet at its quota; a client-generated vote id
makes a retried submission (lost response, double click) an acknowledgement, never a second vote.
Candidates come from an in-process copy of the assignments and votes (board.py), checked against the
database in the same transaction, so a pick costs the items in progress rather than every vote.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError

from lifecycle.errors import LifecycleError
from lifecycle.preferences.board import Board, board_of
from lifecycle.preferences.db import write
from lifecycle.preferences.schema import Assignment, Batch, Item, Vote, utcnow
from lifecycle.preferences.stats import CHOICES
from lifecycle.preferences.store import EVALUATION, Message, PreferenceStore

SIDES = ("left", "right")
# statements are built once (building one costs more than running it); values are bound per call.
PEOPLE = ("human", EVALUATION)  # the batch sources people vote on in the app
_ITEM_COLUMNS = (Item.id, Item.batch_id, Item.prompt, Item.response_a, Item.response_b, Item.gold)
_ITEM = select(*_ITEM_COLUMNS).where(Item.id == bindparam("item"))
_ASSIGN = insert(Assignment)
_OPEN_HUMAN = (select(Batch.id, Batch.created_at).where(Batch.status == "open", Batch.source.in_(PEOPLE))
               .order_by(Batch.created_at).with_for_update())
_PENDING = (select(*_ITEM_COLUMNS, Assignment.left, Batch.votes_per_item)
            .join(Assignment, Assignment.item_id == Item.id).join(Batch, Batch.id == Item.batch_id)
            .outerjoin(Vote, and_(Vote.item_id == Item.id, Vote.annotator_id == bindparam("annotator")))
            .where(Assignment.annotator_id == bindparam("annotator"), Vote.id.is_(None), Batch.status == "open")
            .order_by(Assignment.assigned_at).limit(1))
_VOTES = select(func.count()).select_from(Vote).where(Vote.item_id == bindparam("item"))
_ASSIGNED = (select(Assignment.left, Item.gold, Batch.votes_per_item, Batch.status)
             .join(Item, Item.id == Assignment.item_id).join(Batch, Batch.id == Item.batch_id)
             .where(Assignment.item_id == bindparam("item"), Assignment.annotator_id == bindparam("annotator")))
_VOTED = select(Vote.id).where(Vote.item_id == bindparam("item"), Vote.annotator_id == bindparam("annotator"))
_VOTE_BY_ID = select(Vote.annotator_id, Vote.item_id).where(Vote.id == bindparam("vote"))
_ADD_VOTE = insert(Vote)


class VoteRefused(LifecycleError):
    """A vote the store will not count; `status` is the HTTP status the app answers with."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Shown:
    """An item as one annotator sees it: `left`/`right` are responses a/b in the order drawn for them."""

    item_id: str
    batch_id: str
    prompt: list[Message]
    left: str
    right: str
    left_is: str  # "a" | "b"


def next_item(store: PreferenceStore, annotator_id: int, ttl_s: int = 900, gold_every: int = 5) -> Shown | None:
    board = board_of(store.engine)
    with board.lock:
        with write(store.engine) as s:
            c = s.connection()  # Core statements: the hot path skips the ORM's identity map and unit of work
            item, left = _pending(c, annotator_id)
            given = None
            if item is None:
                item_id = _pick(c, board, annotator_id, timedelta(seconds=ttl_s), gold_every)
                if item_id is None:
                    return None
                item = c.execute(_ITEM, {"item": item_id}).one()
                left, given = secrets.choice("ab"), utcnow()
                c.execute(_ASSIGN, {"item_id": item_id, "annotator_id": annotator_id, "left": left,
                                    "assigned_at": given})
            a, b = item.response_a, item.response_b
            shown = Shown(item.id, item.batch_id, json.loads(item.prompt), *((a, b) if left == "a" else (b, a)), left)
        if given is not None:  # committed: the board learns it only now
            board.assign(item.id, annotator_id, given)
    return shown


def _open_human(c: Connection) -> list[Row[Any]]:
    return list(c.execute(_OPEN_HUMAN).all())


def _pending(c: Connection, annotator_id: int) -> tuple[Row[Any] | None, str]:
    """The item this annotator was given and has not voted on, if it still needs votes."""
    row = c.execute(_PENDING, {"annotator": annotator_id}).first()
    if row is None:
        return None, ""
    if row.gold is None and _votes(c, row.id) >= row.votes_per_item:
        return None, ""
    return row, row.left


def _votes(c: Connection, item_id: str) -> int:
    return c.scalar(_VOTES, {"item": item_id}) or 0


def _pick(c: Connection, board: Board, annotator_id: int, ttl: timedelta, gold_every: int) -> str | None:
    """Among the open human batches (oldest first): every `gold_every`-th assignment a gold item not seen yet,
    else the item nearest its quota (votes + others' unexpired assignments), lowest position first."""
    batches = _open_human(c)  # on PostgreSQL this locks them: nobody else assigns until we commit
    if not batches:
        return None
    board.sync(c)
    seen = board.seen.get(annotator_id, set())
    if gold_every and (len(seen) + 1) % gold_every == 0:
        golds = sorted((b.id, position, i) for b in batches for i, position in board.batch(c, b.id).golds)
        gold = next((i for *_, i in golds if i not in seen), None)
        if gold is not None:
            return gold
    cutoff = utcnow() - ttl
    best: tuple[Any, ...] | None = None
    for b in batches:
        found = board.batch(c, b.id).best(board, seen, cutoff)
        if found is not None and (best is None or (b.created_at, *found) < best[:3]):
            best = (b.created_at, *found)
    return best[3] if best is not None else None


def submit_vote(store: PreferenceStore, vote_id: str, annotator_id: int, item_id: str, choice: str,
                reason: str | None = None) -> str:
    """Record a vote: `choice` is a/b/tie (canonical) or left/right/tie (as shown). Returns "created", or
    "replayed" when this vote id was already recorded for this annotator and item (the first vote stands).
    Raises VoteRefused (with the HTTP status) for a vote that cannot count."""
    if choice not in CHOICES + SIDES:
        raise VoteRefused(f"choice {choice!r}: expected one of {', '.join(CHOICES + SIDES)}", 422)
    board = board_of(store.engine)
    try:
        with board.lock:
            with write(store.engine) as s:
                c = s.connection()
                replay = _replayed(c, vote_id, annotator_id, item_id)
                if replay:
                    return replay
                row = c.execute(_ASSIGNED, {"item": item_id, "annotator": annotator_id}).first()
                if row is None:
                    raise VoteRefused(f"item {item_id} is not assigned to you", 403)
                left, gold, quota, status = row
                if choice in SIDES:  # as the annotator saw it: left is response `left`
                    choice = left if choice == "left" else "b" if left == "a" else "a"
                if status != "open":
                    raise VoteRefused(f"item {item_id}: its batch is {status}, no longer collecting votes")
                if c.scalar(_VOTED, {"item": item_id, "annotator": annotator_id}):
                    raise VoteRefused(f"item {item_id}: you have already voted on it")
                if gold is None and _votes(c, item_id) >= quota:
                    raise VoteRefused(f"item {item_id} already has its {quota} votes")
                c.execute(_ADD_VOTE, {"id": vote_id, "item_id": item_id, "annotator_id": annotator_id,
                                      "choice": choice, "left": left, "reason": reason or None})
            board.vote(item_id, annotator_id)  # committed
        return "created"
    except IntegrityError:  # PostgreSQL: a concurrent insert of the same vote id or (item, annotator)
        with write(store.engine) as s:
            replay = _replayed(s.connection(), vote_id, annotator_id, item_id)
        if replay:
            return replay
        raise VoteRefused(f"item {item_id}: you have already voted on it") from None


def _replayed(c: Connection, vote_id: str, annotator_id: int, item_id: str) -> str:
    vote = c.execute(_VOTE_BY_ID, {"vote": vote_id}).first()
    if vote is None:
        return ""
    if (vote.annotator_id, vote.item_id) != (annotator_id, item_id):
        raise VoteRefused(f"vote id {vote_id} was already used for a different vote")
    return "replayed"


def cast_votes(store: PreferenceStore, batch_id: str, votes: list[tuple[str, str, str]]) -> int:
    """Record synthetic votes (annotator name, item id, choice) for a simulated batch; idempotent (the vote
    id is derived from annotator and item). Returns how many were new."""
    new = 0
    ids = {name: store.synthetic_annotator(name) for name in {v[0] for v in votes}}
    with write(store.engine) as s:
        existing = set(s.scalars(select(Vote.id).join(Item, Item.id == Vote.item_id).where(Item.batch_id == batch_id)))
        for name, item_id, choice in votes:
            vote_id = f"sim-{ids[name]}-{item_id}"[:64]
            if vote_id in existing:
                continue
            left = "ab"[int(hashlib.sha256(vote_id.encode()).hexdigest(), 16) % 2]  # deterministic, like the votes
            s.add(Assignment(item_id=item_id, annotator_id=ids[name], left=left))
            s.add(Vote(id=vote_id, item_id=item_id, annotator_id=ids[name], choice=choice, left=left, synthetic=True))
            new += 1
    return new
