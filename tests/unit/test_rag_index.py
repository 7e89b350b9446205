"""RAG index: a tiny LanceDB table built and queried (dense, full-text, hybrid, filters), and incremental
updates (a changed document re-embedded, untouched ones not, removed ones deleted, new settings rebuild)."""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pytest

from lifecycle.config import RagIndexConfig, SearchConfig, load_config
from lifecycle.data.clean import text_id
from lifecycle.rag.embed import Embedder, load_embedder
from lifecycle.rag.index import build_index
from lifecycle.rag.search import Hit, build_where, fuse, open_index, open_table

CONF = Path(__file__).resolve().parents[2] / "conf"
TOPICS = {
    "json.dumps": "Serialize obj to a JSON formatted string, with optional indentation and sorted keys.",
    "json.loads": "Deserialize a string containing a JSON document to a Python object.",
    "csv.reader": "Return a reader object which iterates over lines of comma-separated values in a CSV file.",
    "csv.writer": "Return a writer object that converts data into delimited strings for CSV files.",
    "os.path.join": "Join one or more path components intelligently into a filesystem path.",
    "shutil.copyfile": "Copy the contents of the file named src to a file named dst, efficiently.",
    "random.shuffle": "Shuffle the sequence x in place, using the random number generator.",
    "heapq.heappush": "Push the item onto the heap, maintaining the heap invariant of a priority queue.",
    "hashlib.sha256": "Return a SHA-256 hash object for computing cryptographic message digests of bytes.",
    "time.sleep": "Suspend execution of the calling thread for the given number of seconds.",
    "re.compile": "Compile a regular expression pattern into a regular expression object for matching.",
    "gzip.open": "Open a gzip-compressed file in binary or text mode, returning a file object.",
}


def make_docs(topics: dict[str, str] = TOPICS) -> list[dict]:
    docs = []
    for i, (name, text) in enumerate(topics.items()):
        body = f"{name}(...)\n\n{text}"
        docs.append({"id": text_id(body), "text": body, "source": "stdlib" if i % 3 else "extra",
                     "path": name.split(".")[0] + ".py", "title": name, "object": name,
                     "split": "validation" if i % 4 == 0 else "train"})
    return docs


def rag_config(*overrides: str) -> RagIndexConfig:
    return load_config(CONF, overrides=["rag_index.ann.min_rows=1000", *overrides]).rag_index


def search_config(*overrides: str) -> SearchConfig:
    return load_config(CONF, overrides=list(overrides)).serve.search


class CountingEmbedder(Embedder):
    """Records every text it embeds."""

    def __init__(self, base: Embedder) -> None:
        super().__init__(base.cfg, base.model)
        self.seen: list[str] = []

    def embed(self, texts: list[str], desc: str = "embed") -> np.ndarray:
        self.seen.extend(texts)
        return super().embed(texts, desc)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder(rag_config().embed)


def test_tiny_index_answers_dense_fulltext_and_hybrid_queries(tmp_path: Path, embedder: Embedder) -> None:
    cfg = rag_config()
    info = build_index(make_docs(), cfg, str(tmp_path / "db"), "docs", embedder)
    assert (info.rows, info.documents, info.embedded_chunks, info.ann) == (12, 12, 12, "none")  # < min_rows
    retriever = open_index(info.to_dict(), search_config())
    for mode in ("dense", "fts", "hybrid"):
        hits = retriever.search("deserialize a JSON document", mode=mode, k=3)
        assert hits[0].title == "json.loads", mode
        assert len(hits) == (2 if mode == "fts" else 3)  # full-text: only the two texts with "JSON" match
        assert hits[0].score >= hits[-1].score
    dense = retriever.search("copy a file to another file", mode="dense", k=12)
    assert dense[0].title == "shutil.copyfile"
    assert [h.chunk_id for h in dense] == [h.chunk_id for h in retriever.dense(
        embedder.embed_query("copy a file to another file"), 12, exact=True)]


def test_filters_restrict_results_and_values_cannot_escape_the_literal(tmp_path: Path, embedder: Embedder) -> None:
    cfg = rag_config()
    info = build_index(make_docs(), cfg, str(tmp_path / "db"), "docs", embedder)
    retriever = open_index(info.to_dict(), search_config())
    hits = retriever.search("file", mode="hybrid", k=10, where=build_where(source="extra"))
    assert hits and all(h.source == "extra" for h in hits)
    hits = retriever.search("object", mode="fts", k=10, where=build_where(title_prefix="csv."))
    assert {h.title for h in hits} == {"csv.reader", "csv.writer"}
    assert retriever.search("file", mode="dense", k=5, where=build_where(path_prefix="gzip"))[0].title == "gzip.open"
    evil = build_where(source="x' OR '1'='1")
    assert evil == "source = 'x'' OR ''1''=''1'"
    assert retriever.search("file", mode="dense", k=5, where=evil) == []
    assert build_where() is None


def test_incremental_update_embeds_only_changed_documents(tmp_path: Path, embedder: Embedder) -> None:
    cfg, uri = rag_config(), str(tmp_path / "db")
    first = build_index(make_docs(), cfg, uri, "docs", embedder)
    table = open_table(uri, "docs")
    before = {r["title"]: r for r in table.search().select(["title", "chunk_id", "vector"]).limit(None).to_list()}

    topics = dict(TOPICS, **{"time.sleep": "Pause the current thread for a number of seconds (may be fractional)."})
    del topics["gzip.open"]
    counting = CountingEmbedder(embedder)
    second = build_index(make_docs(topics), cfg, uri, "docs", counting)
    counts = (second.new_documents, second.changed_documents, second.removed_documents, second.unchanged_documents)
    assert counts == (0, 1, 1, 10)
    assert (second.embedded_chunks, second.reused_chunks, second.deleted_chunks) == (1, 10, 2)
    assert len(counting.seen) == 1 and "Pause the current thread" in counting.seen[0]
    assert second.version > first.version and second.rows == 11

    after = {r["title"]: r for r in open_table(uri, "docs").search().select(["title", "chunk_id", "vector"])
             .limit(None).to_list()}
    assert "gzip.open" not in after
    assert after["time.sleep"]["chunk_id"] != before["time.sleep"]["chunk_id"]
    assert after["json.loads"]["chunk_id"] == before["json.loads"]["chunk_id"]
    assert np.array_equal(after["json.loads"]["vector"], before["json.loads"]["vector"])  # untouched: not re-embedded
    found = open_index(second.to_dict(), search_config()).search("pause the thread", "dense", 1)
    assert found[0].title == "time.sleep"
    assert open_table(uri, "docs", first.version).count_rows() == 12  # the previous version stays readable

    counting.seen.clear()
    third = build_index(make_docs(topics), cfg, uri, "docs", counting)
    assert (third.embedded_chunks, third.deleted_chunks, third.version) == (0, 0, second.version)
    assert counting.seen == []


def test_new_chunk_settings_rebuild_and_large_tables_get_an_ann_index(tmp_path: Path, embedder: Embedder) -> None:
    uri = str(tmp_path / "db")
    build_index(make_docs(), rag_config(), uri, "docs", embedder)
    cfg = rag_config("rag_index.chunk.unit=characters", "rag_index.chunk.size=48", "rag_index.chunk.overlap=8",
                     "rag_index.ann.min_rows=16", "rag_index.ann.num_sub_vectors=8")
    info = build_index(make_docs(), cfg, uri, "docs", embedder)
    assert info.rebuilt and info.deleted_chunks == 12 and info.reused_chunks == 0
    assert info.rows > 16 and info.embedded_chunks == info.rows and info.ann == "ivf_pq"
    retriever = open_index(info.to_dict(), search_config("serve.search.nprobes=4"))
    assert retriever.search("regular expression pattern", "dense", 3)[0].title == "re.compile"
    with pytest.raises(Exception, match="num_sub_vectors"):
        build_index(make_docs(), rag_config("rag_index.ann.min_rows=1", "rag_index.ann.num_sub_vectors=7"),
                    str(tmp_path / "db2"), "docs", embedder)


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    def hit(cid: str) -> Hit:
        return Hit(cid, cid, 0, "", "", "", cid, "", 0.0)

    fused = fuse([[hit("a"), hit("b"), hit("c")], [hit("b"), hit("d"), hit("c")]], [1.0, 1.0], 3, "rrf", 60)
    assert [h.chunk_id for h in fused] == ["b", "c", "a"]  # in both lists beats first in one
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61) and fused[1].score == pytest.approx(2 / 63)


def test_embeddings_are_normalised_and_order_preserving(embedder: Embedder) -> None:
    texts = ["short", "a much longer text about JSON serialization " * 5, "medium length text here"]
    vectors = embedder.embed(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (3, embedder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([embedder.embed_query(t, threads=1) for t in texts])
    plain = embedder.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    for other in (one_by_one, plain):  # same vectors up to rounding (bfloat16 where the CPU has it)
        assert (vectors * other).sum(axis=1).min() > 0.999
    assert (vectors[0] * vectors[1]).sum() < 0.9  # and different texts differ



class DyingEmbedder(CountingEmbedder):
    """Embeds `survive` calls (shards), then dies as a killed process would."""

    def __init__(self, base: Embedder, survive: int) -> None:
        super().__init__(base)
        self.survive = survive

    def embed(self, texts: list[str], desc: str = "embed") -> np.ndarray:
        if self.survive == 0:
            raise KeyboardInterrupt
        self.survive -= 1
        return super().embed(texts, desc)


def rows_by_chunk(uri: str) -> dict[str, tuple[str, list[float]]]:
    rows = open_table(uri, "docs").search().select(["chunk_id", "text", "vector"]).limit(None).to_list()
    return {r["chunk_id"]: (r["text"], list(r["vector"])) for r in rows}


def test_a_killed_build_resumes_from_its_embedded_shards(tmp_path: Path, embedder: Embedder,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    cfg = rag_config("rag_index.embed.shard_size=5")  # 12 chunks: shards of 5, 5 and 2
    clean = build_index(make_docs(), cfg, str(tmp_path / "clean"), "docs", embedder)
    uri, checkpoints = str(tmp_path / "db"), tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        build_index(make_docs(), cfg, uri, "docs", DyingEmbedder(embedder, survive=2), checkpoints=checkpoints)
    assert len(list(checkpoints.glob("embed-*.npy"))) == 2 and not list(checkpoints.glob(".*"))
    assert "docs" not in lancedb.connect(uri).list_tables().tables  # nothing half-written in the table

    counting = CountingEmbedder(embedder)
    with caplog.at_level("INFO", logger="lifecycle.rag.index"):
        resumed = build_index(make_docs(), cfg, uri, "docs", counting, checkpoints=checkpoints)
    assert "resuming: 2 of 3 embed parts already done" in caplog.text
    assert (resumed.embed_shards, resumed.resumed_shards, len(counting.seen)) == (3, 2, 2)
    assert (resumed.rows, resumed.version, resumed.embedded_chunks) == (clean.rows, clean.version, 12)
    assert rows_by_chunk(uri) == rows_by_chunk(str(tmp_path / "clean"))  # the same chunks, the same vectors

    with caplog.at_level("INFO", logger="lifecycle.rag.index"):
        other = build_index(make_docs(), rag_config("rag_index.embed.shard_size=4"), str(tmp_path / "db2"), "docs",
                            CountingEmbedder(embedder), checkpoints=checkpoints)
    assert other.resumed_shards == 0  # other shards, other texts: nothing saved applies
