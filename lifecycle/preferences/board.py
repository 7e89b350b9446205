"""An in-process copy of the preference store's assignments and votes, so that handing out the next item and
counting a batch's progress cost the items in progress, not every vote ever cast (assign.py, store.py).

    board = board_of(store.engine)
    with board.lock, write(store.engine) as s:     # the lock spans the transaction and the update after it
        board.sync(s.connection())                 # reloads when the row counts show another process wrote
        board.batch(c, batch_id).best(board, seen, cutoff), board.batch(c, batch_id).progress
    board.assign(item_id, annotator_id, at); board.vote(item_id, annotator_id)   # after a commit

Why it is exact: assignments and votes are only ever added (never updated or deleted) and items never change
once published, so equal row counts mean equal rows. `sync` compares the counts inside the caller's
transaction (under the write lock, or the batch row lock on PostgreSQL) and reloads everything if they
differ; this process applies its own writes after they commit, while still holding `lock`.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, Row, bindparam, func, select

from lifecycle.preferences.schema import Assignment, Batch, Item, Vote


_COUNTS = select(select(func.count()).select_from(Assignment).scalar_subquery(),
                 select(func.count()).select_from(Vote).scalar_subquery())
_ASSIGNMENTS = select(Assignment.item_id, Assignment.annotator_id, Assignment.assigned_at)
_VOTES = select(Vote.item_id, Vote.annotator_id)
_ITEMS = (select(Item.id, Item.position, Item.gold, Batch.votes_per_item).join(Batch)
          .where(Item.batch_id == bindparam("batch")).order_by(Item.position))


class Board:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.counts: tuple[int, int] = (-1, -1)  # (assignments, votes) mirrored
        self.votes: Counter[str] = Counter()  # item -> votes
        self.open: dict[str, dict[int, datetime]] = defaultdict(dict)  # item -> annotator -> assigned_at, unvoted
        self.seen: dict[int, set[str]] = defaultdict(set)  # annotator -> items ever given to them
        self.batches: dict[str, BatchBoard] = {}

    def sync(self, c: Connection) -> None:
        counts = c.execute(_COUNTS).one()
        if (counts[0], counts[1]) == self.counts:
            return
        self._reset()
        for item_id, annotator_id, at in c.execute(_ASSIGNMENTS):
            self.open[item_id][annotator_id] = at
            self.seen[annotator_id].add(item_id)
        for item_id, annotator_id in c.execute(_VOTES):
            self.votes[item_id] += 1
            self.open[item_id].pop(annotator_id, None)
        self.counts = (counts[0], counts[1])

    def batch(self, c: Connection, batch_id: str) -> BatchBoard:
        if batch_id not in self.batches:
            rows = c.execute(_ITEMS, {"batch": batch_id}).all()
            self.batches[batch_id] = BatchBoard(self, rows)
        return self.batches[batch_id]

    def touched(self, item_id: str) -> bool:
        return self.votes[item_id] > 0 or bool(self.open.get(item_id))

    def assign(self, item_id: str, annotator_id: int, at: datetime) -> None:
        self.open[item_id][annotator_id] = at
        self.seen[annotator_id].add(item_id)
        self.counts = (self.counts[0] + 1, self.counts[1])
        for batch in self.batches.values():
            batch.update(self, item_id)

    def vote(self, item_id: str, annotator_id: int) -> None:
        self.votes[item_id] += 1
        self.open[item_id].pop(annotator_id, None)
        self.counts = (self.counts[0], self.counts[1] + 1)
        for batch in self.batches.values():
            if item_id in batch.plain:
                batch.voted += 1
                batch.complete += self.votes[item_id] == batch.quota
            batch.update(self, item_id)


class BatchBoard:
    """One batch: its non-gold items in position order, the frontier (items given out but short of their
    quota), a cursor at the first item nobody was given, and its progress counts."""

    def __init__(self, board: Board, rows: Sequence[Row[Any]]) -> None:
        self.order = [i for i, _, gold, _ in rows if gold is None]
        self.plain = set(self.order)
        self.position = {i: position for i, position, _, _ in rows}
        self.golds = [(i, position) for i, position, gold, _ in rows if gold is not None]
        self.quota = rows[0][3] if rows else 0
        self.frontier: set[str] = set()
        self.cursor = 0
        self.voted = sum(board.votes[i] for i in self.order)  # votes on non-gold items
        self.complete = sum(board.votes[i] >= self.quota for i in self.order)
        for item_id in self.order:
            self.update(board, item_id)

    @property
    def progress(self) -> tuple[int, int, int]:
        """(non-gold items, votes on them, items with their quota of votes)."""
        return len(self.order), self.voted, self.complete

    def update(self, board: Board, item_id: str) -> None:
        if item_id in self.plain and board.touched(item_id):
            if board.votes[item_id] < self.quota:
                self.frontier.add(item_id)
            else:
                self.frontier.discard(item_id)

    def best(self, board: Board, seen: set[str], cutoff: datetime) -> tuple[int, int, str] | None:
        """(-taken, position, item id) of the item nearest its quota that `seen` lacks, lowest position first;
        taken = votes + unexpired unvoted assignments (assigned after `cutoff`)."""
        best = None
        for item_id in self.frontier:
            if item_id in seen:
                continue
            taken = board.votes[item_id] + sum(at > cutoff for at in board.open[item_id].values())
            if taken < self.quota and (best is None or (-taken, self.position[item_id]) < best[:2]):
                best = (-taken, self.position[item_id], item_id)
        while self.cursor < len(self.order) and board.touched(self.order[self.cursor]):
            self.cursor += 1
        if self.cursor < len(self.order):  # never given to anyone, so not seen either
            fresh = (0, self.position[self.order[self.cursor]], self.order[self.cursor])
            best = fresh if best is None or fresh < best else best
        return best


_BOARDS: WeakKeyDictionary[Engine, Board] = WeakKeyDictionary()
_BOARDS_LOCK = threading.Lock()


def board_of(engine: Engine) -> Board:
    """The board of this engine's database, one per engine (and so per PreferenceStore) in this process."""
    board = _BOARDS.get(engine)
    if board is None:
        with _BOARDS_LOCK:
            board = _BOARDS.setdefault(engine, Board())
    return board
