"""ingest: read every configured source, clean, split long texts, de-duplicate, split train/validation,
and save one Arrow dataset (columns: id, text, source, path, title, object, split, invalid_bytes).

    stats = ingest_documents(cfg.ingest, Path("out"))   # writes out/documents and out/stats.json
    stats = ingest_documents(cfg.ingest, Path("out"), Engine.from_config(cfg.run))   # shards on run.engine
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from lifecycle.config import IngestConfig
from lifecycle.data.clean import minhash_signatures, near_duplicates, normalize_text, split_document, text_id
from lifecycle.engine import LOCAL, Engine, shards
from lifecycle.data.sources import read_source
from lifecycle.errors import InputError
from lifecycle.progress import progress

log = logging.getLogger("lifecycle.ingest")
COLUMNS = ["id", "text", "source", "path", "title", "object", "split", "invalid_bytes"]


def collect_documents(cfg: IngestConfig, engine: Engine = LOCAL) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Read every source, then clean and split its records in shards of `ingest.shard_size` (on `engine`);
    count what was dropped."""
    docs: list[dict[str, Any]] = []
    stats = {"raw_records": 0, "invalid_bytes": 0, "dropped_short": 0}
    for source in cfg.sources:
        records = list(progress(read_source(source, cfg.max_undecodable_share), desc=f"read {source.name}",
                                logger=log))
        parts = engine.map(partial(clean_records, cfg=cfg), shards(records, cfg.shard_size), f"clean-{source.name}")
        before = len(docs)
        for part_docs, part_stats in parts:
            docs.extend(part_docs)
            for key, value in part_stats.items():
                stats[key] += value
        log.info("source %s: %d documents", source.name, len(docs) - before)
        if len(docs) == before:
            files = sorted({r["path"] for r in records})
            raise InputError(f"source '{source.name}' produced no documents of at least {cfg.min_doc_chars} "
                             f"characters (ingest.min_doc_chars): {len(records)} records read from {len(files)} "
                             f"files ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''}), all empty or shorter")
    return docs, stats


def clean_records(records: Sequence[dict[str, Any]], cfg: IngestConfig) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Normalise and split each record into documents; (documents in record order, counts)."""
    docs: list[dict[str, Any]] = []
    stats = {"raw_records": len(records), "invalid_bytes": 0, "dropped_short": 0}
    for record in records:
        stats["invalid_bytes"] += record["invalid_bytes"]
        text = normalize_text(record["text"], cfg.normalization)
        pieces = split_document(text, cfg.max_doc_chars)
        for n, piece in enumerate(pieces):
            if len(piece) < cfg.min_doc_chars:
                stats["dropped_short"] += 1
                continue
            title = record["title"] if len(pieces) == 1 else f"{record['title']} ({n + 1}/{len(pieces)})"
            docs.append({"text": piece, "source": record["source"], "path": record["path"], "title": title,
                         "object": record["object"], "invalid_bytes": record["invalid_bytes"] if n == 0 else 0})
    return docs, stats


def deduplicate(docs: list[dict[str, Any]], cfg: IngestConfig,
                engine: Engine = LOCAL) -> tuple[list[dict[str, Any]], dict[str, int]]:
    seen: set[str] = set()
    unique = []
    for doc in docs:
        doc["id"] = text_id(doc["text"])
        if doc["id"] not in seen:
            seen.add(doc["id"])
            unique.append(doc)
    stats = {"exact_duplicates": len(docs) - len(unique), "near_duplicates": 0}
    if cfg.near_dup.enabled and len(unique) > 1:
        near = cfg.near_dup
        texts = [d["text"] for d in unique]
        sign = partial(minhash_signatures, num_perm=near.num_perm, shingle_words=near.shingle_words)
        signatures = np.concatenate(engine.map(sign, shards(texts, cfg.shard_size), "minhash"))
        flags = near_duplicates(signatures, near.threshold)
        stats["near_duplicates"] = sum(flags)
        unique = [d for d, dup in zip(unique, flags, strict=True) if not dup]
    return unique, stats


def assign_splits(docs: list[dict[str, Any]], val_fraction: float) -> None:
    """Stable split by content hash; at least one validation document when there are two or more."""
    for doc in docs:
        doc["split"] = "validation" if int(doc["id"][:8], 16) / 2**32 < val_fraction else "train"
    if val_fraction > 0 and len(docs) >= 2 and not any(d["split"] == "validation" for d in docs):
        min(docs, key=lambda d: d["id"])["split"] = "validation"


def ingest_documents(cfg: IngestConfig, out_dir: Path, engine: Engine = LOCAL) -> dict[str, float]:
    docs, stats = collect_documents(cfg, engine)
    docs_in = len(docs)
    docs, dedup = deduplicate(docs, cfg, engine)
    stats.update(dedup)
    if cfg.max_docs is not None and len(docs) > cfg.max_docs:
        keep = {d["id"] for d in sorted(docs, key=lambda d: d["id"])[: cfg.max_docs]}
        docs = [d for d in docs if d["id"] in keep]
    assign_splits(docs, cfg.val_fraction)
    table = datasets.Dataset.from_dict({c: [d[c] for d in docs] for c in COLUMNS}, features=_features())
    table.save_to_disk(str(out_dir / "documents"))  # one table; splits by the `split` column
    n_val = sum(d["split"] == "validation" for d in docs)
    result: dict[str, float] = {
        **stats,
        "documents_in": docs_in,
        "documents": len(docs),
        "train_documents": len(docs) - n_val,
        "validation_documents": n_val,
        "characters": sum(len(d["text"]) for d in docs),
        "duplicate_share": (stats["exact_duplicates"] + stats["near_duplicates"]) / docs_in if docs_in else 0.0,
    }
    (out_dir / "stats.json").write_text(json.dumps(result, indent=2))
    log.info("ingest: %d documents in, %d exact + %d near duplicates removed, %d kept (%d train / %d validation)",
             docs_in, stats["exact_duplicates"], stats["near_duplicates"], len(docs), len(docs) - n_val, n_val)
    return result


def _features() -> datasets.Features:
    string = datasets.Value("string")
    return datasets.Features({"id": string, "text": string, "source": string, "path": string, "title": string,
                              "object": string, "split": string, "invalid_bytes": datasets.Value("int64")})


def load_documents(path: Path) -> datasets.DatasetDict:
    """The ingest output as {"train", "validation"} (filtered in memory: the stored artifact stays untouched)."""
    table = datasets.load_from_disk(str(path / "documents"))
    return datasets.DatasetDict({
        split: table.filter(lambda s, split=split: s == split, input_columns="split", keep_in_memory=True)
        for split in ("train", "validation")})


def read_documents(path: Path | str) -> list[dict[str, Any]]:
    """Every ingested document (train and validation) of an ingest output as a dict."""
    return [row for split in load_documents(Path(path)).values() for row in split.to_list()]
