"""The preference store: batches of comparison items, annotators (only a hash of their token is kept),
assignments (which annotator sees which item, in which order) and votes.

    store = PreferenceStore.open(url)                   # migrations applied; SQLite or PostgreSQL
    token = store.add_annotator("alice")                # printed once, stored as sha256
    store.publish_batch(NewBatch(...), items)           # idempotent: an existing batch id is left alone
    store.progress(batch_id).done, store.judgements(batch_id), store.voted_items(batch_id)

Assigning items and recording votes: lifecycle/preferences/assign.py.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, bindparam, func, select

from lifecycle.errors import LifecycleError
from lifecycle.preferences.board import board_of
from lifecycle.preferences.db import connect, read, write
from lifecycle.preferences.export import VotedItem
from lifecycle.preferences.schema import Annotator, Batch, Item, Secret, Vote
from lifecycle.preferences.stats import Judgement

Message = dict[str, str]
EVALUATION = "evaluation"  # the source of the evaluate stage's human rounds (lifecycle/evaluate/human.py): the
# annotation app shows their items as it shows `human` batches; no preference set ever holds their votes


@dataclass(frozen=True)
class NewBatch:
    id: str
    source: str  # human | simulated | feedback | evaluation
    votes_per_item: int
    model: str | None = None
    min_agreement: float = 0.0


@dataclass(frozen=True)
class NewItem:
    prompt: tuple[Message, ...]
    response_a: str
    response_b: str
    gold: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return _sha(json.dumps([list(self.prompt), self.response_a, self.response_b, self.gold]))[:32]


@dataclass(frozen=True)
class Progress:
    batch_id: str
    status: str
    items: int  # non-gold items
    votes_per_item: int
    votes: int  # on non-gold items
    complete_items: int  # with their k votes

    @property
    def quota(self) -> int:
        return self.items * self.votes_per_item

    @property
    def done(self) -> bool:
        return self.items > 0 and self.complete_items == self.items


# hot statements, built once (values bound per call)
_BY_TOKEN = select(Annotator.id, Annotator.name).where(Annotator.token_hash == bindparam("hash"), Annotator.active)
_BATCH = select(Batch.status, Batch.votes_per_item).where(Batch.id == bindparam("batch"))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hash_token(token: str) -> str:
    return _sha(token)


class PreferenceStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> PreferenceStore:
        return cls(connect(url))

    # annotators
    def add_annotator(self, name: str) -> str:
        """Create an annotator; return their sign-in token (only its hash is stored)."""
        name = name.strip()
        if not name or len(name) > 64:
            raise LifecycleError(f"annotator name {name!r}: 1 to 64 characters")
        token = secrets.token_urlsafe(24)
        with write(self.engine) as s:
            if s.scalar(select(Annotator.id).where(Annotator.name == name)) is not None:
                raise LifecycleError(f"annotator {name!r} exists; `lifecycle annotators revoke {name}` first")
            s.add(Annotator(name=name, token_hash=hash_token(token)))
        return token

    def revoke_annotator(self, name: str) -> None:
        with write(self.engine) as s:
            annotator = s.scalar(select(Annotator).where(Annotator.name == name))
            if annotator is None:
                raise LifecycleError(f"no annotator named {name!r}")
            annotator.active, annotator.token_hash = False, None

    def annotators(self) -> list[dict[str, Any]]:
        with read(self.engine) as s:
            votes = dict(s.execute(select(Vote.annotator_id, func.count()).group_by(Vote.annotator_id)).all())
            return [{"name": a.name, "active": a.active, "synthetic": a.synthetic, "votes": votes.get(a.id, 0),
                     "created": a.created_at.isoformat(timespec="seconds")}
                    for a in s.scalars(select(Annotator).order_by(Annotator.id))]

    def authenticate(self, token: str) -> tuple[int, str] | None:
        """(annotator id, name) for a valid token of an active annotator."""
        if not token or len(token) > 256:
            return None
        with self.engine.connect() as c:  # on every request of the app: a plain connection, no ORM session
            row = c.execute(_BY_TOKEN, {"hash": hash_token(token)}).first()
        return (row[0], row[1]) if row else None

    def synthetic_annotator(self, name: str) -> int:
        return self.tokenless_annotator(name, synthetic=True)

    def tokenless_annotator(self, name: str, synthetic: bool) -> int:
        """The id of an annotator nobody signs in as (created on first use): a simulated judge (synthetic), or
        the chat page of `lifecycle serve` recording people's feedback (not synthetic)."""
        with write(self.engine) as s:
            found = s.scalar(select(Annotator.id).where(Annotator.name == name))
            if found is None:
                annotator = Annotator(name=name, synthetic=synthetic)
                s.add(annotator)
                s.flush()
                found = annotator.id
            return found

    def secret(self, name: str) -> str:
        """A server-side random secret, created on first use and shared by every app process."""
        with write(self.engine) as s:
            row = s.get(Secret, name)
            if row is None:
                row = Secret(name=name, value=secrets.token_hex(32))
                s.add(row)
            return row.value

    # batches
    def publish_batch(self, batch: NewBatch, items: list[NewItem]) -> bool:
        """Store a batch and its items; False (nothing written) if a batch with this id exists."""
        with write(self.engine) as s:
            if s.get(Batch, batch.id) is not None:
                return False
            s.add(Batch(id=batch.id, source=batch.source, model=batch.model, votes_per_item=batch.votes_per_item,
                        min_agreement=batch.min_agreement))
            seen: set[str] = set()
            for position, item in enumerate(items):
                if item.id in seen:
                    continue
                seen.add(item.id)
                prompt = json.dumps(list(item.prompt))
                # unique across batches: two batches may hold the same pair (a new round between the same models)
                s.add(Item(id=f"{_sha(batch.id)[:16]}-{item.id}", batch_id=batch.id, position=position, prompt=prompt,
                           prompt_id=_sha(prompt)[:32], response_a=item.response_a, response_b=item.response_b,
                           response_a_id=_sha(prompt + item.response_a)[:32],
                           response_b_id=_sha(prompt + item.response_b)[:32], gold=item.gold,
                           meta=json.dumps(item.meta)))
        return True

    def set_flow_run(self, batch_id: str, flow_run_id: str | None) -> None:
        with write(self.engine) as s:
            self._batch(s, batch_id).flow_run_id = flow_run_id

    def set_status(self, batch_id: str, status: str) -> None:
        with write(self.engine) as s:
            self._batch(s, batch_id).status = status

    def batch(self, batch_id: str) -> Batch | None:
        with read(self.engine) as s:
            return s.get(Batch, batch_id)

    def batches(self) -> list[Batch]:
        with read(self.engine) as s:
            return list(s.scalars(select(Batch).order_by(Batch.created_at)))

    def progress(self, batch_id: str) -> Progress:
        board = board_of(self.engine)  # counts kept in memory, checked against the database (board.py)
        with board.lock, self.engine.connect() as c, c.begin():
            row = c.execute(_BATCH, {"batch": batch_id}).first()
            if row is None:
                raise LifecycleError(f"no preference batch {batch_id!r}")
            board.sync(c)
            items, votes, complete = board.batch(c, batch_id).progress
        return Progress(batch_id, row.status, items, row.votes_per_item, votes, complete)

    @staticmethod
    def _batch(s: Any, batch_id: str) -> Batch:
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise LifecycleError(f"no preference batch {batch_id!r}")
        return batch

    # read-outs
    def judgements(self, batch_id: str) -> list[Judgement]:
        with read(self.engine) as s:
            rows = s.execute(select(Vote, Item, Annotator.name).join(Item, Vote.item_id == Item.id).join(
                Annotator, Vote.annotator_id == Annotator.id).where(Item.batch_id == batch_id)).all()
        return [Judgement(item_id=item.id, annotator=name, choice=vote.choice, left=vote.left,
                          len_a=len(item.response_a), len_b=len(item.response_b), gold=item.gold,
                          pair=(item.response_a_id, item.response_b_id), prompt_id=item.prompt_id,
                          synthetic=vote.synthetic) for vote, item, name in rows]

    def voted_items(self, batch_id: str) -> list[VotedItem]:
        """The batch's non-gold items with their votes, for the exported preference set."""
        with read(self.engine) as s:
            batch = self._batch(s, batch_id)
            items = s.scalars(select(Item).where(Item.batch_id == batch_id, Item.gold.is_(None))
                              .order_by(Item.position)).all()
            votes: dict[str, list[str]] = {}
            for item_id, choice in s.execute(select(Vote.item_id, Vote.choice).join(Item, Vote.item_id == Item.id)
                                             .where(Item.batch_id == batch_id).order_by(Vote.created_at)):
                votes.setdefault(item_id, []).append(choice)
            return [VotedItem(item_id=i.id, prompt=tuple(json.loads(i.prompt)), response_a=i.response_a,
                              response_b=i.response_b, votes=tuple(votes.get(i.id, ())), source=batch.source,
                              reference=json.loads(i.meta or "{}").get("reference"))
                    for i in items]

    def items(self, batch_id: str) -> list[Item]:
        with read(self.engine) as s:
            return list(s.scalars(select(Item).where(Item.batch_id == batch_id).order_by(Item.position)))
