"""Retrieval over the LanceDB chunk table: dense (ANN, or exact), full-text (BM25 over the chunk text and,
weighted by `title_boost`, its title) and hybrid (the two rankings fused: weighted reciprocal ranks or a
weighted sum of min-max normalised scores, `serve.search.fusion`), optionally re-scored by a cross-encoder
(`serve.search.rerank`, rerank.py), with metadata filters built safely from user values.

    retriever = open_current(state_dir, cfg.serve.search)          # the index the last rag_index run built
    hits = retriever.search("parse a JSON string", mode="hybrid", k=5, where=build_where(source="stdlib"))
    hits[0].title, hits[0].score, hits[0].text

`<state_dir>/rag/current.json` points at the latest index (table URI, name and version); a cached
rag_index run points it back at its own version, which is opened read-only (LanceDB time travel). A
registered model carries the index version it was paired with (`index_of_model`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lifecycle.config import RagEmbedConfig, SearchConfig
from lifecycle.config.serve import FusionConfig
from lifecycle.errors import LifecycleError
from lifecycle.manifest import write_json_atomic

if TYPE_CHECKING:  # LanceDB and the embedder (torch, sentence-transformers) load when a table is opened
    import lancedb

    from lifecycle.rag.embed import Embedder
    from lifecycle.rag.rerank import Reranker

log = logging.getLogger("lifecycle.rag.search")
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
    score: float  # dense: cosine similarity; fts: BM25; hybrid: the fused score; reranked: the cross-encoder's

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


QUESTION_WORDS = frozenset("what which who whom whose when where why how does do did is are was were can could "
                           "should would will a an the of to in on for".split())


def keywords(query: str) -> str:
    """The query without its question words, for full-text search: in the title index (stop words kept, so
    that `sndhdr.what` is found) "What does os.path.join do?" would otherwise match `sndhdr.what` best."""
    words = [w for w in query.split() if w.strip("?.,;:!\"'()").lower() not in QUESTION_WORDS]
    return " ".join(words) or query


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
    """Search one version of a chunk table with the embedding model it was built with (and, when given, a
    cross-encoder that re-scores the first stage's top `rerank.candidates`)."""

    def __init__(self, tbl: lancedb.table.Table, embedder: Embedder, cfg: SearchConfig,
                 reranker: Reranker | None = None) -> None:
        self.tbl = tbl
        self.embedder = embedder
        self.cfg = cfg
        self.reranker = reranker
        self.fts_columns = {i.columns[0] for i in tbl.list_indices() if i.index_type == "FTS"}
        if cfg.title_boost and "title" not in self.fts_columns:
            log.warning("search: serve.search.title_boost = %s, but table %s has no full-text index on `title` "
                        "(built before it existed): full-text search reads the text only until the next rag_index "
                        "run adds it", cfg.title_boost, tbl.name)

    def search(self, query: str, mode: Mode | None = None, k: int | None = None, where: str | None = None,
               exact: bool = False) -> list[Hit]:
        mode = mode or self.cfg.mode
        k = k or self.cfg.top_k
        depth = max(k, self.cfg.rerank.candidates) if self.reranker else k
        qvec = None if mode == "fts" else self.embedder.embed_query(query, self.cfg.query_threads)
        hits = self.first_stage(mode, query, qvec, depth, where, exact)
        return self.reranker.rerank(query, hits, k) if self.reranker else hits

    def first_stage(self, mode: Mode, query: str, qvec: np.ndarray | None, k: int, where: str | None = None,
                    exact: bool = False) -> list[Hit]:
        """The top k of one mode without the reranker (`qvec`: the query's vector; unused by fts)."""
        if mode == "fts":
            return self.fts(query, k, where)
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

    def fts(self, query: str, k: int, where: str | None = None, title_boost: float | None = None) -> list[Hit]:
        """BM25 over the chunk text; with a title boost, over the text and the title (a multi-field match:
        the sum of each field's BM25, the title's times the boost)."""
        from lancedb.query import MatchQuery, MultiMatchQuery

        boost = self.cfg.title_boost if title_boost is None else title_boost
        words = keywords(query)
        match = (MultiMatchQuery(words, ["search_text", "title"], boosts=[1.0, boost])
                 if boost and "title" in self.fts_columns else MatchQuery(words, "search_text"))
        q = self.tbl.search(match, query_type="fts").select([*FIELDS, "_score"]).limit(k)
        if where:
            q = q.where(where, prefilter=True)
        return [_hit(r, r["_score"]) for r in _run(q, where)]

    def hybrid(self, qvec: np.ndarray, query: str, k: int, where: str | None = None) -> list[Hit]:
        """The dense and full-text top `fusion.candidates` (at least k) fused as `serve.search.fusion` says."""
        n = max(k, self.cfg.fusion.candidates)
        return fuse_pair(self.dense(qvec, n, where), self.fts(query, n, where), k, self.cfg.fusion)


def fuse_pair(dense: list[Hit], fts: list[Hit], k: int, fusion: FusionConfig) -> list[Hit]:
    """A dense and a full-text ranking fused with `fusion` (dense_weight for dense, the rest for full-text)."""
    return fuse([dense, fts], [fusion.dense_weight, 1.0 - fusion.dense_weight], k, fusion.method, fusion.rrf_k)


def fuse(ranked: list[list[Hit]], weights: list[float], k: int, method: str, rrf_k: int) -> list[Hit]:
    """Weighted fusion of ranked lists (best first). rrf: score = sum of weight / (rrf_k + rank), ranks from 1;
    linear: sum of weight x the list's scores min-max normalised to [0, 1] (1 when they are all equal). A chunk
    missing from a list gets 0 from it. Ties keep the order of first appearance, the lists visited heaviest
    first, so weights that are 0 for all lists but one reproduce that list's order (the others' chunks after)."""
    scores: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for i in sorted(range(len(ranked)), key=lambda j: -weights[j]):  # stable: equal weights keep list order
        hits = ranked[i]
        parts = _min_max([h.score for h in hits]) if method == "linear" else \
            [1.0 / (rrf_k + rank) for rank in range(1, len(hits) + 1)]
        for hit, part in zip(hits, parts):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weights[i] * part
            first.setdefault(hit.chunk_id, hit)
    order = sorted(first, key=lambda c: -scores[c])  # stable: ties stay in first-seen order
    return [replace(first[c], score=scores[c]) for c in order[:k]]


def _min_max(values: list[float]) -> list[float]:
    if not values:
        return []
    low, high = min(values), max(values)
    return [(v - low) / (high - low) if high > low else 1.0 for v in values]


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
    """A retriever over the table described by `info` (an index.json), embedding queries with its model and
    re-scoring with `cfg.rerank.model` when one is set."""
    from lifecycle.rag.embed import load_embedder
    from lifecycle.rag.rerank import load_reranker

    embed_cfg = RagEmbedConfig.model_validate(info["embed"])
    reranker = load_reranker(cfg.rerank) if cfg.rerank.model else None
    return Retriever(open_table(info["uri"], info["table"], info["version"]), load_embedder(embed_cfg), cfg, reranker)


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
