"""The preference store and assignment: k independent votes per item, nobody sees an item twice, gold
items mixed in, idempotent votes (a replayed vote id is acknowledged once), tokens stored as hashes, and
concurrent voters neither losing nor doubling a vote."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from lifecycle.preferences.assign import VoteRefused, cast_votes, next_item, submit_vote
from lifecycle.preferences.db import default_url, read
from lifecycle.preferences.schema import Annotator, Vote
from lifecycle.preferences.store import NewBatch, NewItem, PreferenceStore


def items(n: int, gold: int = 0) -> list[NewItem]:
    plain = [NewItem(({"role": "user", "content": f"question {i}"},), f"answer {i} one", f"answer {i} two")
             for i in range(n)]
    return plain + [NewItem(({"role": "user", "content": f"gold {i}"},), "right", "wrong", gold="a")
                    for i in range(gold)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> PreferenceStore:
    """The same code on both backends: SQLite (WAL) by default, PostgreSQL by URL."""
    if request.param == "postgres":
        return PreferenceStore.open(request.getfixturevalue("postgres_url"))
    return PreferenceStore.open(default_url(tmp_path))


def annotators(store: PreferenceStore, n: int) -> list[int]:
    return [store.authenticate(store.add_annotator(f"person-{i}"))[0] for i in range(n)]


def vote_all(store: PreferenceStore, who: int, gold_every: int = 0) -> list[str]:
    seen = []
    while (shown := next_item(store, who, gold_every=gold_every)) is not None:
        seen.append(shown.item_id)
        assert submit_vote(store, str(uuid.uuid4()), who, shown.item_id, "a") == "created"
    return seen


def test_tokens_are_stored_as_hashes_and_authenticate(store: PreferenceStore) -> None:
    token = store.add_annotator("alice")
    with read(store.engine) as s:
        stored = s.scalar(select(Annotator.token_hash))
    assert token not in stored and len(stored) == 64
    assert store.authenticate(token)[1] == "alice"
    assert store.authenticate("not-a-token") is None
    store.revoke_annotator("alice")
    assert store.authenticate(token) is None


def test_each_item_gets_k_votes_from_different_people_and_nobody_sees_one_twice(store: PreferenceStore) -> None:
    store.publish_batch(NewBatch("b1", "human", votes_per_item=2), items(5))
    people = annotators(store, 3)
    seen = {who: vote_all(store, who) for who in people}
    for who, ids in seen.items():
        assert len(ids) == len(set(ids))  # never the same item twice
    votes = [i for ids in seen.values() for i in ids]
    assert sorted(set(votes)) == sorted(set(votes)) and all(votes.count(i) == 2 for i in set(votes))
    progress = store.progress("b1")
    assert (progress.items, progress.votes, progress.complete_items, progress.done) == (5, 10, 5, True)


def test_a_reload_shows_the_same_item_in_the_same_order(store: PreferenceStore) -> None:
    store.publish_batch(NewBatch("b1", "human", votes_per_item=1), items(3))
    who, = annotators(store, 1)
    first, again = next_item(store, who), next_item(store, who)
    assert first == again
    assert {first.left, first.right} == {"answer 0 one", "answer 0 two"} or first.item_id != ""


def test_gold_items_are_mixed_in_and_not_counted_in_the_quota(store: PreferenceStore) -> None:
    store.publish_batch(NewBatch("b1", "human", votes_per_item=1), items(8, gold=2))
    who, = annotators(store, 1)
    shown = vote_all(store, who, gold_every=3)
    golds = [i for i in shown if store.judgements("b1") and i in {j.item_id for j in store.judgements("b1") if j.gold}]
    assert len(golds) == 2 and len(shown) == 10
    assert shown.index(golds[0]) == 2  # every third item
    assert store.progress("b1").items == 8


def test_a_replayed_vote_is_acknowledged_once_and_a_conflicting_one_refused(store: PreferenceStore) -> None:
    store.publish_batch(NewBatch("b1", "human", votes_per_item=2), items(2))
    alice, bob = annotators(store, 2)
    shown = next_item(store, alice)
    vote_id = str(uuid.uuid4())
    assert submit_vote(store, vote_id, alice, shown.item_id, "b") == "created"
    assert submit_vote(store, vote_id, alice, shown.item_id, "b") == "replayed"
    assert submit_vote(store, vote_id, alice, shown.item_id, "a") == "replayed"  # the first vote stands
    with pytest.raises(VoteRefused, match="different vote"):
        submit_vote(store, vote_id, bob, shown.item_id, "a")
    with pytest.raises(VoteRefused, match="already voted"):
        submit_vote(store, str(uuid.uuid4()), alice, shown.item_id, "a")
    with pytest.raises(VoteRefused, match="not assigned") as refused:
        submit_vote(store, str(uuid.uuid4()), bob, shown.item_id, "a")
    assert refused.value.status == 403
    with pytest.raises(VoteRefused, match="choice"):
        submit_vote(store, str(uuid.uuid4()), alice, shown.item_id, "up")
    assert store.progress("b1").votes == 1


def test_votes_record_the_order_shown(store: PreferenceStore) -> None:
    store.publish_batch(NewBatch("b1", "human", votes_per_item=1), items(20))
    who, = annotators(store, 1)
    while (shown := next_item(store, who, gold_every=0)) is not None:
        submit_vote(store, str(uuid.uuid4()), who, shown.item_id, "left")  # always the one shown on the left
    judgements = store.judgements("b1")
    assert all(j.choice == j.left for j in judgements)
    assert {j.left for j in judgements} == {"a", "b"}  # the order is randomised


def test_publishing_is_idempotent(store: PreferenceStore) -> None:
    assert store.publish_batch(NewBatch("b1", "human", votes_per_item=1), items(3))
    assert not store.publish_batch(NewBatch("b1", "human", votes_per_item=1), items(5))
    assert store.progress("b1").items == 3


def test_concurrent_voters_lose_and_double_nothing(store: PreferenceStore) -> None:
    store.publish_batch(NewBatch("b1", "human", votes_per_item=3), items(20))
    people = annotators(store, 6)
    acknowledged: list[str] = []
    lock = threading.Lock()

    def annotate(who: int) -> None:
        while (shown := next_item(store, who, gold_every=0)) is not None:
            vote_id = str(uuid.uuid4())
            for _ in range(2):  # every vote sent twice, as a client retrying after a lost response would
                submit_vote(store, vote_id, who, shown.item_id, "tie")
            with lock:
                acknowledged.append(vote_id)

    threads = [threading.Thread(target=annotate, args=(who,)) for who in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with read(store.engine) as s:
        stored = s.scalars(select(Vote.id)).all()
    assert sorted(stored) == sorted(acknowledged) and len(stored) == 60  # 20 items x 3 votes, each once
    assert store.progress("b1").done


def test_simulated_votes_are_synthetic_and_idempotent(store: PreferenceStore) -> None:
    store.publish_batch(NewBatch("sim", "simulated", votes_per_item=2), items(3))
    ids = [i.id for i in store.items("sim")]
    votes = [(judge, i, "a") for judge in ("simulated-1", "simulated-2") for i in ids]
    assert cast_votes(store, "sim", votes) == 6
    assert cast_votes(store, "sim", votes) == 0
    assert all(j.synthetic for j in store.judgements("sim")) and store.progress("sim").done
    assert [v.votes for v in store.voted_items("sim")] == [("a", "a")] * 3
    assert [v.reference for v in store.voted_items("sim")] == [None] * 3  # none in these items' meta
    referenced = [NewItem(({"role": "user", "content": "q"},), "x", "y", meta={"reference": "the answer"})]
    store.publish_batch(NewBatch("ref", "simulated", votes_per_item=1), referenced)
    assert [v.reference for v in store.voted_items("ref")] == ["the answer"]  # from the item's meta, for the export


def test_stores_opened_from_many_threads_at_once_migrate_safely(tmp_path: Path) -> None:
    """The flow and the app's threads open the same store concurrently (Alembic's proxies are global)."""
    errors: list[BaseException] = []

    def open_one(i: int) -> None:
        try:
            PreferenceStore.open(default_url(tmp_path / f"s{i % 2}"))
        except BaseException as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
