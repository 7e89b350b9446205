"""Build and incrementally update the LanceDB table of chunks: embeddings, an ANN vector index, full-text
indexes on the chunk text and on the title, and a scalar index on `source` for filters.

Incremental: every row carries its document's `doc_key` (content hash + metadata + index settings, see
chunk.py). A build embeds only documents whose key is not in the table yet and deletes the rows of keys
that are gone, then folds the new rows into the existing indexes (`optimize`, deleting no old version: which
versions go is retention.py's rule). When the settings (chunking, embedding model, dtype) differ from the
table's, the table is rebuilt from scratch. A crash between the delete and the add leaves a consistent table
that the next build repairs, because the diff is by content. Embedding, the long part, is saved shard by
shard in a checkpoint folder when one is given: a build killed while embedding resumes from its shards.

    info = build_index(docs, cfg.rag_index, db_uri="state/rag/lancedb", table="docs", checkpoints=ckpt_dir)
    info.version, info.embedded_chunks, info.reused_chunks, info.deleted_chunks
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import FTS, BTree, HnswSq, IvfFlat, IvfPq

from lifecycle.config import RagIndexConfig
from lifecycle.engine import LOCAL, Engine, shards
from lifecycle.hashing import hash_json
from lifecycle.errors import ConfigError, InputError
from lifecycle.rag.chunk import chunk_documents, doc_key
from lifecycle.rag.embed import Embedder, embed_texts, load_embedder
from lifecycle.resume import Parts

log = logging.getLogger("lifecycle.rag.index")
STRING_COLUMNS = ("chunk_id", "doc_key", "doc_id", "text", "search_text", "source", "path", "title", "object",
                  "split", "settings")
# LanceDB 0.40's Python optimize() always prunes after compacting (default: versions older than 7 days) and
# exposes no compaction without it (compact_files() needs pylance). No version is 100 years old, so this window
# prunes nothing. Not timedelta.max: Lance computes now - window and panics on the overflow.
KEEP_EVERY_VERSION = timedelta(days=36500)
RAY_WAVE = 16  # on Ray, with checkpoints: shards embedded in parallel between two saves


@dataclass(frozen=True)
class IndexInfo:
    """What a build produced; saved as index.json and found again by `open_index`."""

    uri: str
    table: str
    version: int
    rows: int
    documents: int
    settings: str
    embed: dict[str, Any]  # the embedding config the table was built with (queries must use the same)
    dtype: str  # what embed.dtype resolved to on the machine that built it
    dim: int
    ann: str  # the ANN index kind, or "none" (exact search)
    rebuilt: bool
    new_documents: int  # documents not indexed before (by source, path and title)
    changed_documents: int  # same source, path and title, new content or settings: re-embedded
    removed_documents: int
    unchanged_documents: int
    embedded_chunks: int
    reused_chunks: int
    deleted_chunks: int
    embed_shards: int
    resumed_shards: int  # embedding shards a killed build had finished (loaded, not embedded again)
    embed_seconds: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def index_settings(cfg: RagIndexConfig) -> str:
    """What makes stored vectors and chunks reusable: chunking and the embedding model (not batch sizes)."""
    return hash_json({"chunk": cfg.chunk.model_dump(), "model": cfg.embed.model, "dtype": cfg.embed.dtype})


def table_schema(dim: int) -> pa.Schema:
    fields = [pa.field(c, pa.string()) for c in STRING_COLUMNS]
    fields.insert(4, pa.field("chunk_index", pa.int32()))
    return pa.schema(fields + [pa.field("vector", pa.list_(pa.float32(), dim))])


def to_arrow(chunks: list[dict[str, Any]], vectors: np.ndarray, settings: str, dim: int) -> pa.Table:
    columns: dict[str, Any] = {c: [ch[c] for ch in chunks] for c in STRING_COLUMNS if c != "settings"}
    columns["settings"] = [settings] * len(chunks)
    columns["chunk_index"] = [ch["chunk_index"] for ch in chunks]
    flat = pa.array(vectors.reshape(-1).astype(np.float32))
    columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    schema = table_schema(dim)
    return pa.table({f.name: columns[f.name] for f in schema}, schema=schema)


def identity(doc: dict[str, Any]) -> tuple[str, str, str]:
    """Which document this is, whatever its content: to tell a changed document from a new one."""
    return doc["source"] or "", doc["path"] or "", doc["title"] or ""


def existing_keys(tbl: lancedb.table.Table) -> tuple[dict[str, int], dict[str, tuple[str, str, str]], set[str]]:
    """{doc_key: chunk rows}, {doc_key: identity} and the settings hashes present in the table."""
    rows = tbl.search().select(["doc_key", "settings", "source", "path", "title"]).limit(None).to_list()
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["doc_key"]] = counts.get(row["doc_key"], 0) + 1
    return counts, {r["doc_key"]: identity(r) for r in rows}, {r["settings"] for r in rows}


def quote(value: str) -> str:
    """A SQL string literal for a LanceDB filter (single quotes doubled: no way out of the literal)."""
    return "'" + value.replace("'", "''") + "'"


def delete_documents(tbl: lancedb.table.Table, keys: list[str], batch: int = 500) -> None:
    for start in range(0, len(keys), batch):
        tbl.delete(f"doc_key IN ({', '.join(quote(k) for k in keys[start:start + batch])})")


def ann_config(cfg: RagIndexConfig, rows: int, dim: int) -> IvfPq | IvfFlat | HnswSq:
    ann = cfg.ann
    partitions = max(1, round(ann.partitions_per_sqrt_rows * math.sqrt(rows)))
    if ann.kind == "ivf_pq":
        if dim % ann.num_sub_vectors:
            raise ConfigError(f"rag_index.ann.num_sub_vectors = {ann.num_sub_vectors}: must divide the embedding "
                              f"dimension {dim} of {cfg.embed.model}")
        return IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=ann.num_sub_vectors)
    if ann.kind == "ivf_flat":
        return IvfFlat(distance_type="cosine", num_partitions=partitions)
    return HnswSq(distance_type="cosine", num_partitions=1)


def ensure_indexes(tbl: lancedb.table.Table, cfg: RagIndexConfig, dim: int, changed: bool) -> str:
    """Create missing indexes, fold new rows into existing ones; return the ANN kind in use ("none": exact)."""
    names = {i.columns[0]: re.sub(r"(?<!^)(?=[A-Z])", "_", i.index_type).lower() for i in tbl.list_indices()}
    rows = tbl.count_rows()
    if changed and names:
        tbl.optimize(cleanup_older_than=KEEP_EVERY_VERSION)  # compact, add unindexed rows to every index
    if "search_text" not in names:
        tbl.create_index("search_text", config=FTS(), replace=True)
    if "title" not in names:  # serve.search.title_boost; not stemmed, stop words kept: `dumps` is not `dump`
        tbl.create_index("title", config=FTS(stem=False, remove_stop_words=False), replace=True)
    if "source" not in names:
        tbl.create_index("source", config=BTree(), replace=True)
    if "vector" in names:
        return names["vector"]
    if rows < cfg.ann.min_rows:
        log.info("rag_index: %d rows < ann.min_rows=%d: no ANN index, queries use exact search", rows,
                 cfg.ann.min_rows)
        return "none"
    started = time.perf_counter()
    tbl.create_index("vector", config=ann_config(cfg, rows, dim), replace=True)
    log.info("rag_index: %s index over %d rows in %.1f s", cfg.ann.kind, rows, time.perf_counter() - started)
    return cfg.ann.kind


def indexed_documents(tbl: lancedb.table.Table | None, settings: str,
                      dim: int) -> tuple[dict[str, int], dict[str, tuple[str, str, str]], int | None]:
    """({doc_key: rows}, {doc_key: identity}, rows dropped by a rebuild or None): the table is rebuilt when
    there is none, or when it was built with other chunking or embedding settings."""
    if tbl is None:
        return {}, {}, 0
    have, identities, stored = existing_keys(tbl)
    if stored - {settings} or tbl.schema.field("vector").type.list_size != dim:
        log.info("rag_index: chunking or embedding settings changed: rebuilding table %s", tbl.name)
        return {}, {}, sum(have.values())
    return have, identities, None


def embed_chunks(texts: list[str], cfg: RagIndexConfig, embedder: Embedder, engine: Engine,
                 checkpoints: Path | None) -> tuple[np.ndarray, int]:
    """(vectors (len(texts), dim), shards resumed): `texts` embedded in shards of `embed.shard_size` on
    `engine`. With a `checkpoints` folder each finished shard is saved there (named by a hash of its texts and
    the embedding settings) and a re-run after a kill loads it instead of embedding it again."""
    pieces = shards(texts, cfg.embed.shard_size)
    settings = {"embed": index_settings(cfg), "dtype": embedder.dtype}
    names = [hash_json([settings, list(piece)]) for piece in pieces]
    parts = Parts(checkpoints, "embed", log) if checkpoints is not None else None
    done = parts.load_arrays(names) if parts else {}
    todo = [i for i, name in enumerate(names) if name not in done]
    embed = embedder.embed if engine.kind == "local" else partial(embed_texts, cfg.embed)  # the same computation
    wave = (1 if engine.kind == "local" else RAY_WAVE) if parts else max(len(todo), 1)  # shards between saves
    for start in range(0, len(todo), wave):
        batch = todo[start:start + wave]
        for i, vectors in zip(batch, engine.map(embed, [pieces[i] for i in batch], "embed-chunks"), strict=True):
            done[names[i]] = vectors
            if parts:
                parts.save_array(names[i], vectors)
    found = [done[name] for name in names]
    return (np.concatenate(found) if found else np.empty((0, embedder.dim), dtype=np.float32)), len(pieces) - len(todo)


def build_index(docs: list[dict[str, Any]], cfg: RagIndexConfig, db_uri: str, table: str,
                embedder: Embedder | None = None, engine: Engine = LOCAL,
                checkpoints: Path | None = None) -> IndexInfo:
    """Bring table `table` in `db_uri` up to date with `docs` (dicts with id, text and metadata). New chunks
    are embedded in shards of `embed.shard_size` on `engine` (on Ray each worker loads the model once); with
    a `checkpoints` folder, finished shards survive a kill (`embed_chunks`)."""
    started = time.perf_counter()
    if not docs:
        raise InputError("rag_index: no documents to index")
    embedder = embedder or load_embedder(cfg.embed)
    settings = index_settings(cfg)
    wanted = {doc_key(d, settings): d for d in docs}
    db = lancedb.connect(db_uri)
    tbl = db.open_table(table) if table in db.list_tables().tables else None
    have, identities, dropped = indexed_documents(tbl, settings, embedder.dim)
    rebuilt = dropped is not None
    new = [d for k, d in wanted.items() if k not in have]
    gone = [k for k in have if k not in wanted]
    changed = len({identity(d) for d in new} & {identities[k] for k in gone})
    chunks = chunk_documents(new, cfg.chunk, settings, embedder.tokenizer)
    log.info("rag_index: %d documents (%d new, %d changed, %d removed, %d unchanged) -> embedding %d chunks",
             len(wanted), len(new) - changed, changed, len(gone) - changed, len(wanted) - len(new), len(chunks))
    embed_started = time.perf_counter()
    vectors, resumed = embed_chunks([c["search_text"] for c in chunks], cfg, embedder, engine, checkpoints)
    embed_seconds = time.perf_counter() - embed_started
    data = to_arrow(chunks, vectors, settings, embedder.dim)
    if rebuilt:
        if not len(data):
            raise InputError("rag_index: the documents produced no chunks (all empty?)")
        tbl = db.create_table(table, data=data, schema=table_schema(embedder.dim), mode="overwrite")
    else:
        delete_documents(tbl, gone)
        if len(data):
            tbl.add(data)
    ann = ensure_indexes(tbl, cfg, embedder.dim, changed=bool(gone or len(data)) and not rebuilt)
    info = IndexInfo(uri=db_uri, table=table, version=int(tbl.version), rows=tbl.count_rows(),
                     documents=len(wanted), settings=settings, embed=cfg.embed.model_dump(), dtype=embedder.dtype,
                     dim=embedder.dim,
                     ann=ann, rebuilt=rebuilt, new_documents=len(new) - changed,
                     changed_documents=changed, removed_documents=len(gone) - changed,
                     unchanged_documents=len(wanted) - len(new), embedded_chunks=len(chunks),
                     reused_chunks=sum(have[k] for k in have if k in wanted),
                     deleted_chunks=(dropped or 0) + sum(have[k] for k in gone),
                     embed_shards=math.ceil(len(chunks) / cfg.embed.shard_size), resumed_shards=resumed,
                     embed_seconds=embed_seconds, seconds=time.perf_counter() - started)
    rate = f" ({len(chunks) / max(embed_seconds, 1e-9):.1f} chunks/s)" if chunks else ""
    log.info("rag_index: table %s version %d: %d rows; embedded %d chunks%s, reused %d, deleted %d", table,
             info.version, info.rows, info.embedded_chunks, rate, info.reused_chunks, info.deleted_chunks)
    return info
