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
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lifecycle.errors import LifecycleError
from lifecycle.preferences.db import write
from lifecycle.preferences.schema import Assignment, Batch, Item, Vote, utcnow
from lifecycle.preferences.stats import CHOICES

SIDES = ("left", "right")
from lifecycle.preferences.store import Message, PreferenceStore


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
    with write(store.engine) as s:
        item, left = _pending(s, annotator_id)
        if item is None:
            item = _pick(s, annotator_id, timedelta(seconds=ttl_s), gold_every)
            if item is None:
                return None
            left = secrets.choice("ab")
            s.add(Assignment(item_id=item.id, annotator_id=annotator_id, left=left))
        a, b = item.response_a, item.response_b
        return Shown(item.id, item.batch_id, json.loads(item.prompt), *((a, b) if left == "a" else (b, a)), left)


def _open_human(s: Session) -> list[Batch]:
    batches = s.scalars(select(Batch).where(Batch.status == "open", Batch.source == "human")
                        .order_by(Batch.created_at).with_for_update()).all()
    return list(batches)


def _pending(s: Session, annotator_id: int) -> tuple[Item | None, str]:
    """The item this annotator was given and has not voted on, if it still needs votes."""
    row = s.execute(select(Item, Assignment.left, Batch.votes_per_item)
                    .join(Assignment, Assignment.item_id == Item.id).join(Batch, Batch.id == Item.batch_id)
                    .outerjoin(Vote, and_(Vote.item_id == Item.id, Vote.annotator_id == annotator_id))
                    .where(Assignment.annotator_id == annotator_id, Vote.id.is_(None), Batch.status == "open")
                    .order_by(Assignment.assigned_at)).first()
    if row is None:
        return None, ""
    item, left, quota = row
    if item.gold is None and _votes(s, item.id) >= quota:
        return None, ""
    return item, left


def _votes(s: Session, item_id: str) -> int:
    return s.scalar(select(func.count()).select_from(Vote).where(Vote.item_id == item_id)) or 0


def _pick(s: Session, annotator_id: int, ttl: timedelta, gold_every: int) -> Item | None:
    batches = _open_human(s)
    if not batches:
        return None
    ids = [b.id for b in batches]
    seen = select(Assignment.item_id).where(Assignment.annotator_id == annotator_id)
    given = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.annotator_id == annotator_id)) or 0
    if gold_every and (given + 1) % gold_every == 0:
        gold = s.scalars(select(Item).where(Item.batch_id.in_(ids), Item.gold.is_not(None), Item.id.not_in(seen))
                         .order_by(Item.batch_id, Item.position).limit(1)).first()
        if gold is not None:
            return gold
    votes = select(Vote.item_id, func.count().label("n")).group_by(Vote.item_id).subquery()
    live = (select(Assignment.item_id, func.count().label("n"))
            .outerjoin(Vote, and_(Vote.item_id == Assignment.item_id, Vote.annotator_id == Assignment.annotator_id))
            .where(Vote.id.is_(None), Assignment.assigned_at > utcnow() - ttl)
            .group_by(Assignment.item_id).subquery())
    taken = func.coalesce(votes.c.n, 0) + func.coalesce(live.c.n, 0)
    return s.scalars(select(Item).join(Batch, Batch.id == Item.batch_id)
                     .outerjoin(votes, votes.c.item_id == Item.id).outerjoin(live, live.c.item_id == Item.id)
                     .where(Item.batch_id.in_(ids), Item.gold.is_(None), Item.id.not_in(seen),
                            taken < Batch.votes_per_item)
                     .order_by(Batch.created_at, taken.desc(), Item.position).limit(1)).first()


def submit_vote(store: PreferenceStore, vote_id: str, annotator_id: int, item_id: str, choice: str,
                reason: str | None = None) -> str:
    """Record a vote: `choice` is a/b/tie (canonical) or left/right/tie (as shown). Returns "created", or
    "replayed" when this vote id was already recorded for this annotator and item (the first vote stands).
    Raises VoteRefused (with the HTTP status) for a vote that cannot count."""
    if choice not in CHOICES + SIDES:
        raise VoteRefused(f"choice {choice!r}: expected one of {', '.join(CHOICES + SIDES)}", 422)
    try:
        with write(store.engine) as s:
            replay = _replayed(s, vote_id, annotator_id, item_id)
            if replay:
                return replay
            row = s.execute(select(Assignment.left, Item.gold, Batch.votes_per_item, Batch.status)
                            .join(Item, Item.id == Assignment.item_id).join(Batch, Batch.id == Item.batch_id)
                            .where(Assignment.item_id == item_id, Assignment.annotator_id == annotator_id)).first()
            if row is None:
                raise VoteRefused(f"item {item_id} is not assigned to you", 403)
            left, gold, quota, status = row
            if choice in SIDES:  # as the annotator saw it: left is response `left`
                choice = left if choice == "left" else "b" if left == "a" else "a"
            if status != "open":
                raise VoteRefused(f"item {item_id}: its batch is {status}, no longer collecting votes")
            if s.scalar(select(Vote.id).where(Vote.item_id == item_id, Vote.annotator_id == annotator_id)):
                raise VoteRefused(f"item {item_id}: you have already voted on it")
            if gold is None and _votes(s, item_id) >= quota:
                raise VoteRefused(f"item {item_id} already has its {quota} votes")
            s.add(Vote(id=vote_id, item_id=item_id, annotator_id=annotator_id, choice=choice, left=left,
                       reason=reason or None))
        return "created"
    except IntegrityError:  # PostgreSQL: a concurrent insert of the same vote id or (item, annotator)
        with write(store.engine) as s:
            replay = _replayed(s, vote_id, annotator_id, item_id)
        if replay:
            return replay
        raise VoteRefused(f"item {item_id}: you have already voted on it") from None


def _replayed(s: Session, vote_id: str, annotator_id: int, item_id: str) -> str:
    vote = s.get(Vote, vote_id)
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
