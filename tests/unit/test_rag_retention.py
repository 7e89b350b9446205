"""RAG table retention: pinned versions survive pruning, unpinned old ones go, dropped references release
their versions, the latest always survives, builds prune nothing, and references are found in the stage
store, current.json and the model registry (and only for the table asked about)."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from lifecycle.errors import LifecycleError
from lifecycle.rag.retention import open_dataset, pin_version, referenced_versions, retain_versions, tag_name

CONF = Path(__file__).resolve().parents[2] / "conf"


def row(i: int) -> pa.Table:
    return pa.table({"id": pa.array([i], pa.int64()),
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.full(4, i, np.float32)), 4)})


def make_table(path: Path) -> lancedb.table.Table:
    """Version 1 holds row 1; `add_row(tbl, i)` then makes a version holding rows 1..i."""
    return lancedb.connect(str(path)).create_table("t", data=row(1))


def add_row(tbl: lancedb.table.Table, i: int) -> int:
    tbl.add(row(i))
    return tbl.version


def rows_at(path: Path, version: int) -> list[int]:
    tbl = lancedb.connect(str(path)).open_table("t")
    tbl.checkout(version)
    return sorted(tbl.to_arrow()["id"].to_pylist())


def versions(tbl: lancedb.table.Table) -> list[int]:
    return sorted(v["version"] for v in tbl.list_versions())


def test_tag_names_are_made_valid_for_lance_and_stay_distinct(tmp_path: Path) -> None:
    tbl = make_table(tmp_path)
    for good in ("stage-0123456789abcdef", "model-lifecycle-gpt-v12", "current", "model-gpt.v2-v1"):
        assert tag_name(good) == good
    bad = ["model-my gpt/chat-v3", "model-my gpt:chat-v3", "stage-..x", "model-x.lock", ".hidden", "ünï-v1", ""]
    with pytest.raises(RuntimeError, match="Ref"):  # what Lance says to the raw names
        tbl.tags.create(bad[0], 1)
    names = [tag_name(raw) for raw in bad]
    assert len(set(names)) == len(bad)  # no two names collapse into one tag
    assert names[0].startswith("model-my-gpt-chat-v3-")
    for name in names:
        assert tag_name(name) == name  # stable: sanitising twice changes nothing
        tbl.tags.create(name, 1)
    assert set(tbl.tags.list()) == set(names)


def test_pin_version_creates_moves_and_refuses_a_missing_version(tmp_path: Path) -> None:
    tbl = make_table(tmp_path)
    add_row(tbl, 2)
    pin_version(tbl, "model-my gpt-v1", 1)
    pin_version(tbl, "model-my gpt-v1", 2)  # moved, not duplicated
    assert {t: v["version"] for t, v in tbl.tags.list().items()} == {tag_name("model-my gpt-v1"): 2}
    with pytest.raises(LifecycleError, match=r"t\.lance: version 7 \(tag 'stage-abc'\) no longer exists"):
        pin_version(tbl, "stage-abc", 7)


def test_retain_deletes_unpinned_old_versions_and_keeps_pinned_ones(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    tbl = make_table(tmp_path)
    add_row(tbl, 2)
    a, between = add_row(tbl, 3), add_row(tbl, 4)
    b, latest = add_row(tbl, 5), add_row(tbl, 6)
    keep = {"stage-00aa": a, "model-lifecycle-gpt-v1": b}
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, "lifecycle.rag.retention"):
        warnings.simplefilter("always")
        counts = retain_versions(tbl, keep, unreferenced_days=0)
    assert not [w for w in caught if "cleanup_older_than" in str(w.message)]  # lancedb's warning about 0
    assert "6 versions ->" in caplog.text
    assert counts["versions_before"] == 6 and counts["tags"] == 2 and counts["tags_dropped"] == 0
    assert 1 not in versions(tbl) and 2 not in versions(tbl)
    with pytest.raises(ValueError, match="no longer exists"):
        rows_at(tmp_path, 1)
    assert rows_at(tmp_path, a) == [1, 2, 3] and rows_at(tmp_path, b) == [1, 2, 3, 4, 5]
    assert rows_at(tmp_path, latest) == sorted(tbl.to_arrow()["id"].to_pylist()) == [1, 2, 3, 4, 5, 6]
    assert versions(tbl) == [a, b, latest] and between not in versions(tbl)  # unpinned, even between pins

    counts = retain_versions(tbl, {"model-lifecycle-gpt-v1": b}, unreferenced_days=0)  # stage-00aa dropped
    assert set(tbl.tags.list()) == {"model-lifecycle-gpt-v1"} and counts["tags_dropped"] == 1
    assert versions(tbl) == [b, latest]
    assert rows_at(tmp_path, b) == [1, 2, 3, 4, 5]
    assert counts["versions_after"] == len(versions(tbl)) < counts["versions_before"]

    with pytest.raises(LifecycleError, match=f"version {a} \\(tag 'stage-00aa'\\) no longer exists"):
        retain_versions(tbl, {"stage-00aa": a, "current": b}, unreferenced_days=0)
    assert set(tbl.tags.list()) == {"model-lifecycle-gpt-v1"}  # checked before anything changed



def test_a_cached_run_prunes_through_the_lance_dataset_alone(tmp_path: Path) -> None:
    """open_dataset: the table's Lance dataset, which a cached rag_index run looks after without loading
    LanceDB: the same rule, the same result as through the table."""
    tbl = make_table(tmp_path)
    add_row(tbl, 2)
    a, latest = add_row(tbl, 3), add_row(tbl, 4)
    counts = retain_versions(open_dataset(str(tmp_path), "t"), {"stage-00aa": a}, unreferenced_days=0)
    assert counts == {"versions_before": 4, "versions_after": 2, "tags": 1, "tags_dropped": 0}
    assert versions(tbl) == [a, latest] and {t: v["version"] for t, v in tbl.tags.list().items()} == {"stage-00aa": a}
    with pytest.raises(LifecycleError, match="table 'nope' not found"):
        open_dataset(str(tmp_path), "nope")

def test_the_latest_version_always_survives(tmp_path: Path) -> None:
    tbl = make_table(tmp_path)
    add_row(tbl, 2)
    latest = add_row(tbl, 3)
    retain_versions(tbl, {}, unreferenced_days=0)
    assert versions(tbl) == [latest] and tbl.version == latest
    assert sorted(tbl.to_arrow()["id"].to_pylist()) == [1, 2, 3]


def test_other_tags_and_young_versions_are_left_alone(tmp_path: Path) -> None:
    tbl = make_table(tmp_path)
    foreign = add_row(tbl, 2)
    tbl.tags.create("stage-stale", 1)  # ours, referenced by nothing
    tbl.tags.create("release-1", foreign)  # not ours: kept, and so is its version
    counts = retain_versions(tbl, {}, unreferenced_days=1)  # nothing is a day old
    assert versions(tbl)[:2] == [1, 2] and counts["tags_dropped"] == 1
    counts = retain_versions(tbl, {}, unreferenced_days=0)
    assert set(tbl.tags.list()) == {"release-1"} and counts["tags"] == 1
    assert 1 not in versions(tbl) and rows_at(tmp_path, foreign) == [1, 2]
    with pytest.raises(LifecycleError, match="unreferenced_days = -1"):
        retain_versions(tbl, {}, unreferenced_days=-1)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Any]:
    import mlflow
    from mlflow.tracking import MlflowClient

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path}/mlflow.db")
    yield MlflowClient()
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def register(client: Any, tmp_path: Path, name: str, tags: list[dict[str, str]]) -> None:
    client.create_registered_model(name)
    for version_tags in tags:
        mv = client.create_model_version(name, source=str(tmp_path), run_id=None)
        for key, value in version_tags.items():
            client.set_model_version_tag(name, mv.version, key, value)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_referenced_versions_finds_store_outputs_current_and_models_of_this_table_only(
        tmp_path: Path, registry: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    state, uri = tmp_path / "state", str(tmp_path / "db")
    store = state / "artifacts" / "rag_index"
    write_json(store / "aaaa" / "index.json", {"uri": uri, "table": "docs", "version": 3, "rows": 10})
    write_json(store / "bbbb" / "index.json", {"uri": "db", "table": "docs", "version": 7})  # same, relative
    write_json(store / "cccc" / "index.json", {"uri": uri, "table": "other", "version": 9})
    write_json(store / "dddd" / "index.json", {"uri": str(tmp_path / "elsewhere"), "table": "docs", "version": 9})
    write_json(store / ".tmp-eeee" / "index.json", {"uri": uri, "table": "docs", "version": 9})
    write_json(state / "rag" / "current.json", {"uri": uri, "table": "docs", "version": 5})
    here, there = f"{uri}#docs", f"{uri}#other"
    version, table = "lifecycle.rag_index_version", "lifecycle.rag_index_table"
    register(registry, tmp_path, "lifecycle-gpt", [{version: "3", table: here}, {version: "4", table: there}, {}])
    register(registry, tmp_path, "lifecycle gpt", [{version: "6", table: here}])

    found = referenced_versions(state, uri, "docs", ["lifecycle-gpt", "lifecycle gpt", "never-registered"])
    assert found == {"stage-aaaa": 3, "stage-bbbb": 7, "current": 5, "model-lifecycle-gpt-v1": 3,
                     tag_name("model-lifecycle gpt-v1"): 6}
    assert referenced_versions(state, uri, "other", ["lifecycle-gpt"]) == {"stage-cccc": 9,
                                                                          "model-lifecycle-gpt-v2": 4}
    (store / "ffff").mkdir()
    (store / "ffff" / "index.json").write_text("{not json")
    with pytest.raises(LifecycleError, match="ffff/index.json"):
        referenced_versions(state, uri, "docs", [])


def make_docs(texts: dict[str, str]) -> list[dict[str, str]]:
    return [{"id": hashlib.sha256(text.encode()).hexdigest()[:16], "text": text, "source": "stdlib",
             "path": f"{title}.py", "title": title, "object": title, "split": "train"} for title, text in texts.items()]


def test_incremental_build_deletes_no_old_version_and_retain_keeps_what_points_at_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lifecycle.config import load_config
    from lifecycle.rag.embed import Embedder
    from lifecycle.rag.index import build_index

    class HashEmbedder(Embedder):
        """Deterministic 8-d vectors from a hash of the text: no model to load."""

        def __init__(self) -> None:
            self.cfg, self.model, self.tokenizer, self.dtype, self.dim = None, None, None, "float32", 8

        def embed(self, texts: list[str], desc: str = "embed") -> np.ndarray:
            raw = np.array([list(hashlib.sha256(t.encode()).digest()[:8]) for t in texts], np.float32).reshape(-1, 8)
            return (raw + 1) / np.linalg.norm(raw + 1, axis=1, keepdims=True)  # (len(texts), 8)

    windows: list[timedelta | None] = []
    optimize = lancedb.table.LanceTable.optimize
    monkeypatch.setattr(lancedb.table.LanceTable, "optimize",
                        lambda self, **kw: windows.append(kw.get("cleanup_older_than")) or optimize(self, **kw))
    cfg = load_config(CONF, overrides=["rag_index.chunk.unit=characters", "rag_index.chunk.size=200",
                                       "rag_index.chunk.overlap=20", "rag_index.ann.min_rows=1000"]).rag_index
    uri, texts = str(tmp_path / "db"), {f"mod{i}.f": f"Function number {i} does thing {i}." for i in range(6)}
    first = build_index(make_docs(texts), cfg, uri, "docs", HashEmbedder())
    texts["mod0.f"], texts["mod9.f"] = "Function zero now does something else.", "A new function."
    del texts["mod1.f"]
    second = build_index(make_docs(texts), cfg, uri, "docs", HashEmbedder())
    assert (second.changed_documents, second.new_documents, second.removed_documents) == (1, 1, 1)
    assert windows and all(w is not None and w >= timedelta(days=3650) for w in windows)  # prunes nothing
    tbl = lancedb.connect(uri).open_table("docs")
    assert versions(tbl) == list(range(1, tbl.version + 1))  # every version of both builds is still there

    state = tmp_path / "state"
    write_json(state / "artifacts" / "rag_index" / "k1" / "index.json", first.to_dict())
    write_json(state / "rag" / "current.json", second.to_dict())
    keep = referenced_versions(state, uri, "docs", [])
    assert keep == {"stage-k1": first.version, "current": second.version}
    retain_versions(tbl, keep, unreferenced_days=0)
    for info, present, gone in ((first, "mod1.f", "mod9.f"), (second, "mod9.f", "mod1.f")):
        old = lancedb.connect(uri).open_table("docs")
        old.checkout(info.version)
        titles = set(old.to_arrow()["title"].to_pylist())
        assert len(titles) == 6 and present in titles and gone not in titles
