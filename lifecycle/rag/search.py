"""Retrieval over the LanceDB chunk table: dense (ANN, or exact), full-text (BM25) and hybrid
(reciprocal-rank fusion of the two rankings), with metadata filters built safely from user values.

    retriever = open_current(state_dir, cfg.serve.search)          # the index the last rag_index run built
    hits = retriever.search("parse a JSON string", mode="hybrid", k=5, where=build_where(source="stdlib"))
    hits[0].title, hits[0].score, hits[0].text

`<state_dir>/rag/current.json` points at the latest index (table URI, name and version); a cached
rag_index run points it back at its own version, which is opened read-only (LanceDB time travel). A
registered model carries the index version it was paired with (`index_of_model`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lifecycle.config import RagEmbedConfig, SearchConfig
from lifecycle.errors import LifecycleError
from lifecycle.manifest import write_json_atomic

if TYPE_CHECKING:  # LanceDB and the embedder (torch, sentence-transformers) load when a table is opened
    import lancedb

    from lifecycle.rag.embed import Embedder

Mode = Literal["dense", "fts", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "fts", "hybrid")
FIELDS = ["chunk_id", "doc_id", "chunk_index", "text", "source", "path", "title", "object"]


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    doc_id: str
    chunk_index: int
    text: str
    source: str
    path: str
    title: str
    object: str
    score: float  # dense: cosine similarity; fts: BM25; hybrid: reciprocal-rank fusion score

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def build_where(source: str | None = None, title_prefix: str | None = None,
                path_prefix: str | None = None) -> str | None:
    """A filter from user values; each value is a quoted literal, so it cannot change the query."""
    from lifecycle.rag.index import quote

    parts = []
    if source:
        parts.append(f"source = {quote(source)}")
    if title_prefix:
        parts.append(f"starts_with(title, {quote(title_prefix)})")
    if path_prefix:
        parts.append(f"starts_with(path, {quote(path_prefix)})")
    return " AND ".join(parts) or None


class Retriever:
    """Search one version of a chunk table with the embedding model it was built with."""

    def __init__(self, tbl: lancedb.table.Table, embedder: Embedder, cfg: SearchConfig) -> None:
        self.tbl = tbl
        self.embedder = embedder
        self.cfg = cfg

    def search(self, query: str, mode: Mode | None = None, k: int | None = None, where: str | None = None,
               exact: bool = False) -> list[Hit]:
        mode = mode or self.cfg.mode
        k = k or self.cfg.top_k
        if mode == "fts":
            return self.fts(query, k, where)
        qvec = self.embedder.embed_query(query, self.cfg.query_threads)
        if mode == "dense":
            return self.dense(qvec, k, where, exact)
        return self.hybrid(qvec, query, k, where)

    def _ann(self, builder: Any) -> Any:
        builder = builder.nprobes(self.cfg.nprobes)
        return builder.refine_factor(self.cfg.refine_factor) if self.cfg.refine_factor else builder

    def dense(self, qvec: np.ndarray, k: int, where: str | None = None, exact: bool = False) -> list[Hit]:
        q = self.tbl.search(qvec, vector_column_name="vector").distance_type("cosine")
        q = q.select([*FIELDS, "_distance"]).limit(k)
        q = q.bypass_vector_index() if exact else self._ann(q)
        if where:
            q = q.where(where, prefilter=True)
        return [_hit(r, 1.0 - r["_distance"]) for r in _run(q, where)]

    def fts(self, query: str, k: int, where: str | None = None) -> list[Hit]:
        q = self.tbl.search(query, query_type="fts").select([*FIELDS, "_score"]).limit(k)
        if where:
            q = q.where(where, prefilter=True)
        return [_hit(r, r["_score"]) for r in _run(q, where)]

    def hybrid(self, qvec: np.ndarray, query: str, k: int, where: str | None = None) -> list[Hit]:
        """Reciprocal-rank fusion of the dense and full-text top k: score = sum over lists of 1 / (rrf_k + rank)."""
        return fuse([self.dense(qvec, k, where), self.fts(query, k, where)], k, self.cfg.rrf_k)


def fuse(ranked: list[list[Hit]], k: int, rrf_k: int) -> list[Hit]:
    """RRF over ranked lists (ranks from 1); ties keep the order of first appearance (dense first)."""
    scores: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for hits in ranked:
        for rank, hit in enumerate(hits, 1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (rrf_k + rank)
            first.setdefault(hit.chunk_id, hit)
    order = sorted(first, key=lambda c: -scores[c])  # stable: ties stay in first-seen order
    return [replace(first[c], score=scores[c]) for c in order[:k]]


def _run(query: Any, where: str | None) -> list[dict[str, Any]]:
    try:
        return query.to_list()
    except (ValueError, RuntimeError, OSError) as err:
        if where and ("filter" in str(err).lower() or "column" in str(err).lower()):
            raise LifecycleError(f"search filter {where!r} is not valid: {err}") from None
        raise


def _hit(row: dict[str, Any], score: float) -> Hit:
    return Hit(**{f: row[f] for f in FIELDS}, score=float(score))


def rag_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "rag"


def write_current(state_dir: Path, payload: dict[str, Any]) -> None:
    """Point `<state_dir>/rag/current.json` at an index, atomically (readers never see half a file)."""
    path = rag_dir(state_dir) / "current.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, payload)


def read_current(state_dir: Path) -> dict[str, Any]:
    path = rag_dir(state_dir) / "current.json"
    if not path.is_file():
        raise LifecycleError(f"no RAG index in {state_dir} ({path} is missing): build one with "
                             f"`lifecycle run --until rag_index --state-dir {state_dir}` (plus your --profile)")
    return json.loads(path.read_text())


def open_table(uri: str, table: str, version: int | None = None) -> lancedb.table.Table:
    import lancedb

    db = lancedb.connect(uri)
    if table not in db.list_tables().tables:
        raise LifecycleError(f"RAG index table '{table}' not found in {uri}; re-run the rag_index stage")
    tbl = db.open_table(table)
    if version is not None and tbl.version != version:
        try:
            tbl.checkout(version)
        except (ValueError, RuntimeError, OSError) as err:
            raise LifecycleError(f"RAG index {uri}/{table} version {version} no longer exists ({err}); rebuild it "
                                 "with `lifecycle run --from rag_index`") from None
    return tbl


def open_index(info: dict[str, Any], cfg: SearchConfig) -> Retriever:
    """A retriever over the table described by `info` (an index.json), embedding queries with its model."""
    from lifecycle.rag.embed import load_embedder

    embed_cfg = RagEmbedConfig.model_validate(info["embed"])
    return Retriever(open_table(info["uri"], info["table"], info["version"]), load_embedder(embed_cfg), cfg)


def open_current(state_dir: Path, cfg: SearchConfig) -> Retriever:
    return open_index(read_current(state_dir), cfg)


def format_hits(hits: list[Hit], width: int = 160) -> str:
    """Search results for a terminal: rank, title, source, path, score and the start of the text."""
    if not hits:
        return "no results"
    lines = []
    for i, h in enumerate(hits, 1):
        snippet = " ".join(h.text.split())
        snippet = snippet if len(snippet) <= width else snippet[:width - 3] + "..."
        lines += [f"{i:>2}. {h.title}  [{h.source}] {h.path}  score {h.score:.4f}", f"    {snippet}"]
    return "\n".join(lines)
