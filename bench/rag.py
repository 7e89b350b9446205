"""RAG throughput and quality: prints one JSON object.

  embed    chunks/s of lifecycle's Embedder (length-sorted, token-budget batches) against a plain
           `SentenceTransformer.encode(batch_size=32, normalize_embeddings=True)` on the same texts (a fixed
           sample of the index's chunks), in interleaved rounds (median), plus bfloat16 autocast with its
           worst cosine similarity to the float32 vectors
  latency  p50/p95 ms of dense, full-text and hybrid queries, end to end (query embedding included) and
           search only (vectors embedded beforehand)
  ann      recall@10 of the ANN index against exact search (`bypass_vector_index`) on the same query
           vectors, at the configured nprobes with and without the refine step

    python bench/rag.py --profile quickstart --state-dir /tmp/p4          # after `lifecycle run --until rag_index`
    python bench/rag.py --profile quickstart --state-dir /tmp/p4 --squad ../shared/data/qa/squad2-small.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from lifecycle.config import Config, find_conf_dir, load_config
from lifecycle.hub import resolve_model
from lifecycle.rag.embed import Embedder, load_embedder
from lifecycle.rag.evaluate import indexed_documents, load_squad, python_docs_questions
from lifecycle.rag.index import build_index
from lifecycle.rag.search import MODES, Retriever, open_index, rag_dir, read_current
from lifecycle.runtime import resolve_state_dir


def bench_embed(embedder: Embedder, texts: list[str], rounds: int, threads: int) -> dict[str, Any]:
    """Interleaved rounds of: plain sentence-transformers (float32, batch 32), lifecycle's batching in
    float32, and lifecycle as configured (`dtype: auto` may pick bfloat16); median chunks/s each."""
    torch.set_num_threads(threads)
    fp32_model = SentenceTransformer(resolve_model(embedder.cfg.model), device="cpu").eval()
    fp32 = Embedder(embedder.cfg.model_copy(update={"dtype": "float32"}), fp32_model)
    runs = {"plain_sentence_transformers": lambda: fp32_model.encode(
                texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True),
            "lifecycle_float32": lambda: fp32.embed(texts),
            f"lifecycle_{embedder.dtype}": lambda: embedder.embed(texts)}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    vectors: dict[str, np.ndarray] = {}
    embedder.embed(texts[:64])
    fp32.embed(texts[:64])  # warm-up both models
    for _ in range(rounds):
        for name, fn in runs.items():  # interleaved: drifting machine load hits every variant alike
            start = time.perf_counter()
            vectors[name] = fn()
            rates[name].append(len(texts) / (time.perf_counter() - start))
    median = {name: statistics.median(r) for name, r in rates.items()}
    plain = vectors["plain_sentence_transformers"]
    return {"threads": threads, "chunks_per_s": {k: round(v, 1) for k, v in median.items()},
            "all_rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
            "ratio_vs_plain": {k: round(v / median["plain_sentence_transformers"], 2) for k, v in median.items()},
            "min_cosine_vs_plain": {k: round(float((v * plain).sum(1).min()), 6) for k, v in vectors.items()}}


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def bench_latency(retriever: Retriever, queries: list[str], k: int) -> dict[str, Any]:
    """p50/p95 per mode: end to end (query embedding with search.query_threads) and search only; and the
    query embedding alone on 1 thread and on all cores."""
    vectors = retriever.embedder.embed(queries)
    for q in queries[:5]:
        retriever.search(q, "hybrid", k)  # warm-up (index pages, model)
    out: dict[str, Any] = {"query_threads": retriever.cfg.query_threads}
    for threads in sorted({1, os.cpu_count() or 1}):
        times = []
        for query in queries:
            start = time.perf_counter()
            retriever.embedder.embed_query(query, threads)
            times.append(time.perf_counter() - start)
        out[f"query_embedding_{threads}_threads"] = percentiles(times)
    for mode in MODES:
        end_to_end, search_only = [], []
        for query, qvec in zip(queries, vectors):
            start = time.perf_counter()
            retriever.search(query, mode, k)
            end_to_end.append(time.perf_counter() - start)
            start = time.perf_counter()
            if mode == "dense":
                retriever.dense(qvec, k)
            elif mode == "fts":
                retriever.fts(query, k)
            else:
                retriever.hybrid(qvec, query, k)
            search_only.append(time.perf_counter() - start)
        out[mode] = {"end_to_end": percentiles(end_to_end), "search_only": percentiles(search_only)}
    exact = []
    for qvec in vectors:
        start = time.perf_counter()
        retriever.dense(qvec, k, exact=True)
        exact.append(time.perf_counter() - start)
    out["dense_exact"] = {"search_only": percentiles(exact)}
    return out | {"queries": len(queries), "k": k}


def bench_ann(retriever: Retriever, queries: list[str], k: int = 10) -> dict[str, Any]:
    vectors = retriever.embedder.embed(queries)
    truth = [{h.chunk_id for h in retriever.dense(v, k, exact=True)} for v in vectors]
    out: dict[str, Any] = {"k": k, "queries": len(queries)}
    for label, refine in (("configured", retriever.cfg.refine_factor), ("no_refine", None)):
        cfg = retriever.cfg.model_copy(update={"refine_factor": refine})
        ann = Retriever(retriever.tbl, retriever.embedder, cfg)
        found = [len(t & {h.chunk_id for h in ann.dense(v, k)}) / k for t, v in zip(truth, vectors)]
        out[label] = {"nprobes": cfg.nprobes, "refine_factor": refine,
                      f"recall_at_{k}": round(float(np.mean(found)), 4)}
    return out


def index_for(args: argparse.Namespace, cfg: Config, state_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """(index info, benchmark queries): the current python-docs index, or a table of the SQuAD passages."""
    if args.squad:
        docs, questions = load_squad(Path(args.squad))
        info = build_index(docs, cfg.rag_index, str(rag_dir(state_dir) / "eval" / "lancedb"),
                           "bench_" + Path(args.squad).stem.replace("-", "_")).to_dict()
        return info, [q.text for q in questions][:args.queries]
    info = read_current(state_dir)
    retriever = open_index(info, cfg.serve.search)
    questions = python_docs_questions(indexed_documents(retriever.tbl), args.queries,
                                      cfg.rag_index.evaluate.question_template)
    return info, [q.text for q in questions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile")
    parser.add_argument("--state-dir")
    parser.add_argument("--squad", help="benchmark on the passages and questions of a SQuAD-format file instead")
    parser.add_argument("--embed-sample", type=int, default=1000, help="chunks embedded per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, action="append", help="torch threads for the embedding runs "
                        "(repeatable; default: as configured)")
    args = parser.parse_args()
    cfg = load_config(find_conf_dir(), args.profile)
    state_dir = resolve_state_dir(args.state_dir, cfg.run.state_dir)
    info, queries = index_for(args, cfg, state_dir)
    retriever = open_index(info, cfg.serve.search)
    rows = retriever.tbl.search().select(["search_text"]).limit(None).to_list()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(rows), size=min(args.embed_sample, len(rows)), replace=False)
    texts = [rows[i]["search_text"] for i in sorted(pick)]
    embedder: Embedder = load_embedder(retriever.embedder.cfg)
    threads = torch.get_num_threads()
    result: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": threads, "load_avg_1m": os.getloadavg()[0]},
        "index": {k: info[k] for k in ("table", "version", "rows", "documents", "ann", "dim", "dtype")},
        "embed": {"texts": len(texts), "mean_tokens": float(embedder.token_lengths(texts).mean()),
                  "rounds": args.rounds,
                  "runs": [bench_embed(embedder, texts, args.rounds, t) for t in args.threads or [threads]]}}
    torch.set_num_threads(threads)
    result["latency"] = bench_latency(retriever, queries, cfg.serve.search.top_k)
    result["ann"] = bench_ann(retriever, queries) if info["ann"] != "none" else "no ANN index (rows < ann.min_rows)"
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
