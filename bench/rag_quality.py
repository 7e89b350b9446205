"""Retrieval quality and latency of each way to search, on the same questions: prints one JSON object.

Rows: dense; full-text on the chunk text only (as before issue 19) and with the configured title boost; hybrid
as before (equal-weight reciprocal-rank fusion of each retriever's top 10, text only) and as configured
(conf/serve.yaml, or a fitted profile); and, with --rerank-model, the configured hybrid search re-scored by that
cross-encoder. Each row: recall@k with its bootstrap interval (conf/evaluate.yaml `intervals`), MRR, p50 of the
search alone (query vectors embedded beforehand) and end to end (one query embedded with
serve.search.query_threads, then searched, as `lifecycle search` does).

    python bench/rag_quality.py --profile quickstart --state-dir /tmp/ragq
    python bench/rag_quality.py --profile quickstart --state-dir /tmp/ragq --squad ../shared/data/qa/squad2-small.json
    python bench/rag_quality.py --profile quickstart --state-dir /tmp/ragq --rerank-model /tmp/ce   # + reranked row
    python bench/rag_quality.py ... --squad FILE --fold 0 --rerank-model /tmp/ce-squad-0   # its unseen passages
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle.config import Config, SearchConfig, find_conf_dir, load_config
from lifecycle.rag.evaluate import Question, current_target, evaluate_retrieval, squad_target
from lifecycle.rag.rerank import load_reranker
from lifecycle.rag.search import Retriever, open_index
from lifecycle.runtime import resolve_state_dir


def passage_fold(question: Question, folds: int = 2) -> int:
    """Which fold a SQuAD question's passage falls in (a hash of its id): train on one, evaluate on the other."""
    return int(hashlib.sha256(min(question.relevant).encode()).hexdigest()[:8], 16) % folds


def variants(search: SearchConfig, rerank_model: str | None) -> dict[str, tuple[SearchConfig, bool]]:
    """Row name -> (the search settings, whether the reranker re-scores)."""
    before = search.fusion.model_copy(update={"method": "rrf", "dense_weight": 0.5, "rrf_k": 60, "candidates": 1})
    rows = {
        "dense": (search.model_copy(update={"mode": "dense"}), False),
        "full-text, text only": (search.model_copy(update={"mode": "fts", "title_boost": 0.0}), False),
        f"full-text, title boost {search.title_boost:g}": (search.model_copy(update={"mode": "fts"}), False),
        "hybrid before (RRF, equal weights, text only)": (
            search.model_copy(update={"mode": "hybrid", "title_boost": 0.0, "fusion": before}), False),
        f"hybrid after ({search.fusion.method}, dense weight {search.fusion.dense_weight:g}, title boost "
        f"{search.title_boost:g})": (search.model_copy(update={"mode": "hybrid"}), False),
    }
    if rerank_model:
        rerank = search.rerank.model_copy(update={"model": rerank_model})
        rows[f"hybrid after + cross-encoder (top {rerank.candidates})"] = (
            search.model_copy(update={"mode": "hybrid", "rerank": rerank}), True)
    return rows


def end_to_end_p50(retriever: Retriever, questions: list[Question], k: int) -> float:
    for q in questions[:5]:
        retriever.search(q.text, k=k)  # warm-up
    times = []
    for q in questions:
        start = time.perf_counter()
        retriever.search(q.text, k=k)
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 2)


def bench_quality(cfg: Config, info: dict[str, Any], questions: list[Question],
                  rerank_model: str | None) -> dict[str, Any]:
    base = open_index(info, cfg.serve.search.model_copy(update={"rerank": cfg.serve.search.rerank.model_copy(
        update={"model": None})}))
    reranker = load_reranker(cfg.serve.search.rerank.model_copy(update={"model": rerank_model})) \
        if rerank_model else None
    ks, spec = cfg.rag_index.evaluate.ks, cfg.evaluate.intervals.model_dump()
    out: dict[str, Any] = {}
    for name, (search, reranked) in variants(cfg.serve.search, rerank_model).items():
        retriever = Retriever(base.tbl, base.embedder, search, reranker if reranked else None)
        report = evaluate_retrieval(retriever, questions, ks, (search.mode,), spec)
        row = report["reranked" if reranked else search.mode]
        out[name] = {k: round(v, 4) for k, v in row.items()} | {
            "end_to_end_p50_ms": end_to_end_p50(retriever, questions, search.top_k)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile")
    parser.add_argument("--state-dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--squad", help="the passages and questions of a SQuAD-format file instead of python-docs")
    parser.add_argument("--max-questions", type=int, help="default: rag_index.evaluate.max_questions (python-docs), "
                        "every question (SQuAD)")
    parser.add_argument("--rerank-model", help="a sentence-transformers CrossEncoder (folder or cached hub id)")
    parser.add_argument("--fold", type=int, help="with --squad: only the questions of this fold's passages (the "
                        "ones a cross-encoder from train_cross_encoder.py --fold F did not see)")
    args = parser.parse_args()
    cfg = load_config(find_conf_dir(), args.profile, args.overrides)
    state_dir = resolve_state_dir(args.state_dir, cfg.run.state_dir)
    info, questions, meta = (squad_target(Path(args.squad), cfg, state_dir, args.max_questions) if args.squad else
                             current_target(cfg, state_dir, args.max_questions))
    if args.squad and args.fold is not None:
        questions = [q for q in questions if passage_fold(q) == args.fold]
    load = os.getloadavg()[0]
    result = {"dataset": meta["dataset"], "fold": args.fold, "questions": len(questions), "rows": info["rows"], "ann": info["ann"],
              "cores": os.cpu_count(), "load_avg_1m": load, "rerank_model": args.rerank_model,
              "quality": bench_quality(cfg, info, questions, args.rerank_model), "load_avg_1m_end": os.getloadavg()[0]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
