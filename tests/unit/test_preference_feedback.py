"""Chat-page feedback in the preference store, on SQLite and PostgreSQL: a comparison becomes a voted item of
the model's feedback batch (origin recorded, a retry counted once), ratings become pairs only when a prompt has
an up-rated and a down-rated answer, ties and cancelled ratings give no rows, and the rows and their digest are
deterministic. The ratings table comes from migration 0002 exactly as the ORM declares it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from lifecycle.preferences.db import default_url
from lifecycle.preferences.export import pairs_to_rows
from lifecycle.preferences.feedback import (Answered, FeedbackRefused, feedback_digest, feedback_rows,
                                            record_comparison, record_rating)
from lifecycle.preferences.importers import PreferencePair
from lifecycle.preferences.schema import Base
from lifecycle.preferences.store import PreferenceStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> PreferenceStore:
    if request.param == "postgres":
        return PreferenceStore.open(request.getfixturevalue("postgres_url"))
    return PreferenceStore.open(default_url(tmp_path))


def answer(text: str, version: str = "1", question: str = "How do I parse JSON?") -> Answered:
    alias = "champion" if version == "1" else "challenger"
    return Answered(f"chatcmpl-{uuid.uuid4().hex[:8]}", question, text, f"gpt/{version}", alias, f"tr-{text}",
                    [{"title": "json.loads"}])


def fid() -> str:
    return str(uuid.uuid4())


def test_a_comparison_is_a_voted_item_of_the_feedback_batch(store: PreferenceStore) -> None:
    assert feedback_rows(store) == [] and feedback_digest(store) == "none"
    a, b = answer("use json.loads"), answer("no idea", "2")
    first = fid()
    assert record_comparison(store, first, "chat", a, b, left="b", choice="a", name="gpt") == "created"
    assert record_comparison(store, first, "chat", a, b, left="b", choice="a", name="gpt") == "replayed"
    assert record_comparison(store, fid(), "chat", a, b, left="a", choice="tie", name="gpt") == "created"
    batch = store.batch("feedback-gpt")
    assert (batch.source, batch.model, batch.status) == ("feedback", "gpt", "open")
    items = store.items("feedback-gpt")
    meta = json.loads(items[0].meta)
    assert meta["origin"] == "chat" and meta["models"] == ["gpt/1", "gpt/2"] and meta["left"] == "b"
    assert meta["trace_ids"] == ["tr-use json.loads", "tr-no idea"] and meta["at"]
    assert sorted((j.annotator, j.choice, j.synthetic) for j in store.judgements("feedback-gpt")) == [
        ("chat", "a", False), ("chat", "tie", False)]
    rows = feedback_rows(store)  # the tie is dropped
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"], r["source"]) for r in rows] == [
        ("use json.loads", "no idea", "feedback")]
    assert rows[0]["prompt"] == [{"role": "user", "content": "How do I parse JSON?"}]
    assert set(rows[0]) == {"prompt", "chosen", "rejected", "source", "item_id", "votes", "agreement"}
    with pytest.raises(FeedbackRefused, match="already used"):
        record_comparison(store, first, "chat", b, a, left="a", choice="b", name="gpt")
    with pytest.raises(FeedbackRefused, match="different questions"):
        record_comparison(store, fid(), "chat", a, answer("x", "2", question="other"), "a", "a", "gpt")


def test_ratings_pair_up_only_across_up_and_down(store: PreferenceStore) -> None:
    good, bad, meh = answer("use json.loads"), answer("no idea", "2"), answer("maybe eval?", "2")
    rating = fid()
    assert record_rating(store, rating, "chat", good, 1) == "created"
    assert record_rating(store, rating, "chat", good, 1) == "replayed"
    assert feedback_rows(store) == []  # one up-rated answer alone is no pair
    record_rating(store, fid(), "chat", bad, -1)
    record_rating(store, fid(), "chat", meh, -1)
    record_rating(store, fid(), "chat", meh, 1)  # net zero: neither up nor down
    record_rating(store, fid(), "chat", answer("other", question="Another question?"), -1)
    rows = feedback_rows(store)
    expected = pairs_to_rows([PreferencePair(({"role": "user", "content": "How do I parse JSON?"},),
                                             "use json.loads", "no idea", "chat")], source="feedback")
    assert rows == expected
    digest = feedback_digest(store)
    assert len(digest) == 64 and digest == feedback_digest(store)
    record_comparison(store, fid(), "chat", good, bad, "a", "b", "gpt")
    assert feedback_digest(store) != digest and len(feedback_rows(store)) == 2
    assert [r["item_id"] for r in feedback_rows(store)] == sorted(r["item_id"] for r in feedback_rows(store))
    with pytest.raises(FeedbackRefused, match="already used"):
        record_rating(store, rating, "chat", good, -1)
    with pytest.raises(FeedbackRefused, match="score"):
        record_rating(store, fid(), "chat", good, 2)
    chat = [a for a in store.annotators() if a["name"] == "chat"]
    assert chat and not chat[0]["synthetic"]


def test_migrations_match_the_orm(tmp_path: Path) -> None:
    store = PreferenceStore.open(default_url(tmp_path))
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert "ratings" in Base.metadata.tables
