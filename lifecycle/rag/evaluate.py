"""Retrieval evaluation: recall@k and MRR of dense, full-text and hybrid search on questions whose
relevant documents are known.

- python-docs: a deterministic sample of documented objects (validation split first: documents the
  language model did not train on), asked "What does {object} do?"; relevant = that object's chunks.
- SQuAD-format JSON (v1.1 or v2.0): each question's relevant document is the passage it was written about.

recall@k here is the share of questions with at least one relevant chunk in the top k (hit rate: most
questions have exactly one relevant passage); MRR is the mean of 1/rank of the first relevant chunk within
the largest k (0 when none).

    questions = python_docs_questions(docs, max_questions=200, template="What does {object} do?")
    report = evaluate_retrieval(retriever, questions, ks=[1, 5, 10])   # {"dense": {"recall_at_1": ...}, ...}
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifecycle import names
from lifecycle.config import Config
from lifecycle.data.clean import text_id
from lifecycle.errors import InputError
from lifecycle.progress import progress
from lifecycle.rag.search import MODES, Mode, Retriever

log = logging.getLogger("lifecycle.rag.evaluate")


@dataclass(frozen=True)
class Question:
    text: str
    relevant: frozenset[str]  # document ids (the ingest `id` column)


def stable_order(value: str, seed: int) -> str:
    """A sort key that shuffles values the same way on every machine and run (for samples and folds)."""
    return hashlib.sha256(f"{seed}:{value}".encode()).hexdigest()


def python_docs_questions(docs: list[dict[str, Any]], max_questions: int, template: str,
                          seed: int = 0) -> list[Question]:
    """Questions about documented objects; an object split over several documents has them all relevant."""
    by_object: dict[str, set[str]] = {}
    held_out: set[str] = set()
    for doc in docs:
        if doc.get("object"):
            by_object.setdefault(doc["object"], set()).add(doc["id"])
            if doc.get("split") == "validation":
                held_out.add(doc["object"])
    ranked = sorted(by_object, key=lambda o: (o not in held_out, stable_order(o, seed)))
    return [Question(template.format(object=o), frozenset(by_object[o])) for o in ranked[:max_questions]]


def load_squad(path: Path) -> tuple[list[dict[str, Any]], list[Question]]:
    """(documents, questions) from a SQuAD-format file: one document per distinct passage."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        articles = data["data"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a SQuAD-format JSON file (expected {{'data': [{{'title', 'paragraphs': "
                         f"[{{'context', 'qas'}}]}}]}}): {err}") from None
    docs: dict[str, dict[str, Any]] = {}
    questions: list[Question] = []
    for article in articles:
        for paragraph in article.get("paragraphs", []):
            context = paragraph.get("context", "").strip()
            if not context:
                continue
            doc_id = text_id(context)
            docs.setdefault(doc_id, {"id": doc_id, "text": context, "source": "squad", "path": Path(path).name,
                                     "title": article.get("title", ""), "object": "", "split": "validation"})
            questions.extend(Question(qa["question"], frozenset([doc_id])) for qa in paragraph.get("qas", [])
                             if qa.get("question", "").strip())
    if not docs or not questions:
        raise InputError(f"{path}: no passages with questions found")
    return list(docs.values()), questions


def rank_of_first_relevant(doc_ids: list[str], relevant: frozenset[str]) -> int | None:
    return next((i for i, d in enumerate(doc_ids, 1) if d in relevant), None)


def evaluate_retrieval(retriever: Retriever, questions: list[Question], ks: list[int],
                       modes: tuple[Mode, ...] = MODES,
                       intervals: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """{mode: {recall_at_k..., mrr, p50_ms, questions}} over `questions` (query vectors embedded once, so p50_ms
    is the search alone). With `intervals` ({level, resamples, seed}: conf/evaluate.yaml) each recall@k also has
    `_low`, `_high` and `_n` (a bootstrap over the questions). A retriever with a reranker adds the row
    `reranked`: its configured mode, then the cross-encoder, with the gain in recall@{min k} over that mode
    (`gain_recall_at_<k>`) next to the time the cross-encoder adds (`rerank_p50_ms`)."""
    depth = max(ks)
    vectors = retriever.embedder.embed([q.text for q in questions], desc="embed questions")
    report: dict[str, dict[str, float]] = {}
    for mode in modes:
        ranks, times = [], []
        for question, qvec in progress(list(zip(questions, vectors)), desc=f"evaluate {mode}", logger=log):
            started = time.perf_counter()
            hits = retriever.first_stage(mode, question.text, qvec, depth)
            times.append(time.perf_counter() - started)
            ranks.append(rank_of_first_relevant([h.doc_id for h in hits], question.relevant))
        report[mode] = summarize(ranks, ks, intervals) | {"p50_ms": median_ms(times)}
    if retriever.reranker is not None:
        report["reranked"] = evaluate_reranker(retriever, questions, vectors, ks, report, intervals)
    return report


def evaluate_reranker(retriever: Retriever, questions: list[Question], vectors: Any, ks: list[int],
                      report: dict[str, dict[str, float]], intervals: dict[str, Any] | None) -> dict[str, float]:
    """The configured mode's top `rerank.candidates`, re-scored by the cross-encoder: recall, total and added
    p50 latency, and the recall@{min k} gained over the mode alone (measured here when `report` lacks it)."""
    mode, reranker = retriever.cfg.mode, retriever.reranker
    assert reranker is not None
    depth, pool = max(ks), max(max(ks), retriever.cfg.rerank.candidates)
    ranks, base_ranks, first, second = [], [], [], []
    for question, qvec in progress(list(zip(questions, vectors)), desc=f"evaluate {mode} + rerank", logger=log):
        started = time.perf_counter()
        hits = retriever.first_stage(mode, question.text, qvec, pool)
        middle = time.perf_counter()
        reranked = reranker.rerank(question.text, hits, depth)
        first.append(middle - started)
        second.append(time.perf_counter() - middle)
        base_ranks.append(rank_of_first_relevant([h.doc_id for h in hits[:depth]], question.relevant))
        ranks.append(rank_of_first_relevant([h.doc_id for h in reranked], question.relevant))
    row = summarize(ranks, ks, intervals)
    k = min(ks)
    base = report.get(mode) or summarize(base_ranks, ks)
    return row | {"p50_ms": median_ms([a + b for a, b in zip(first, second)]), "rerank_p50_ms": median_ms(second),
                  f"gain_recall_at_{k}": row[f"recall_at_{k}"] - base[f"recall_at_{k}"]}


def median_ms(seconds: list[float]) -> float:
    return 1000 * sorted(seconds)[len(seconds) // 2] if seconds else 0.0


def summarize(ranks: list[int | None], ks: list[int], intervals: dict[str, Any] | None = None) -> dict[str, float]:
    """recall@k for each k, MRR and the number of questions; with `intervals`, each recall@k's bootstrap
    interval as `recall_at_<k>_low/_high/_n` (bootstrap.py)."""
    from lifecycle.evaluate.bootstrap import flat_keys, interval

    n = len(ranks) or 1
    out: dict[str, float] = {}
    for k in sorted(ks):
        hits = [1.0 if r is not None and r <= k else 0.0 for r in ranks]
        out[f"recall_at_{k}"] = sum(hits) / n
        if intervals and ranks:
            out |= flat_keys(f"recall_at_{k}", interval(hits, **intervals))
    out["mrr"] = sum(1.0 / r for r in ranks if r is not None) / n
    out["questions"] = float(len(ranks))
    return out


def recall_names(row: dict[str, float]) -> list[str]:
    return [m for m in row if m.startswith("recall_at_") and m.removeprefix("recall_at_").isdigit()]


def report_markdown(report: dict[str, dict[str, float]], title: str) -> str:
    """The comparison as a markdown table (modes as rows; recall with its interval when measured)."""
    first = next(iter(report.values()))
    recalls = recall_names(first)

    def cell(row: dict[str, float], m: str) -> str:
        if m == "p50_ms":
            return f"{row[m]:.1f}"
        low, high = row.get(f"{m}_low"), row.get(f"{m}_high")
        return f"{row[m]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else "")

    metrics = recalls + ["mrr", "p50_ms"]
    lines = [f"### {title}", "", "| mode | " + " | ".join(m.replace("_at_", "@") for m in metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    lines += [f"| {mode} | " + " | ".join(cell(row, m) for m in metrics) + " |" for mode, row in report.items()]
    n = int(first["questions"])
    notes = [f"{n} questions; recall@k = share with a relevant chunk in the top k"
             + ("; [low, high]: its bootstrap interval over the questions." if f"{recalls[0]}_low" in first else ".")]
    reranked = report.get("reranked")
    if reranked:
        gain = next(k for k in reranked if k.startswith("gain_recall_at_"))
        notes.append(f"Cross-encoder reranker: {reranked[gain]:+.3f} {gain.removeprefix('gain_').replace('_at_', '@')} "
                     f"for +{reranked['rerank_p50_ms']:.1f} ms p50 per question.")
    return "\n".join(lines + [""] + notes)


def indexed_documents(tbl: Any) -> list[dict[str, Any]]:
    """The documents of a chunk table as {id, object, split} (python-docs questions without the ingest output)."""
    rows = tbl.search().select(["doc_id", "object", "split"]).limit(None).to_list()
    return list({r["doc_id"]: {"id": r["doc_id"], "object": r["object"], "split": r["split"]} for r in rows}.values())


def log_retrieval_eval(state_dir: Path, experiment: str, name: str, report: dict[str, dict[str, float]],
                       params: dict[str, Any], fit: dict[str, Any] | None = None) -> str:
    """One MLflow run with the comparison (metrics `rag_eval/<mode>_<metric>`, a table and markdown) and, after
    `--fit`, the chosen values (params `fit.*`, `rag_eval/fit.json`, the overlay `rag_eval/fitted_search.yaml`)."""
    import mlflow
    import pandas as pd
    import yaml

    from lifecycle.tracking import setup_mlflow

    experiment_id = setup_mlflow(Path(state_dir), experiment)
    tags = {names.STAGE: "eval-retrieval"}
    with mlflow.start_run(run_name=name, experiment_id=experiment_id, tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics({f"rag_eval/{mode}_{k}": v for mode, row in report.items() for k, v in row.items()})
        mlflow.log_table(pd.DataFrame([{"mode": m} | row for m, row in report.items()]), "rag_eval/retrieval_eval.json")
        mlflow.log_text(report_markdown(report, name), "rag_eval/retrieval_eval.md")
        if fit is not None:
            chosen = fit["chosen"]
            mlflow.log_params({"fit.title_boost": chosen["title_boost"], "fit.settings_tried": fit["settings_tried"]}
                              | {f"fit.fusion.{k}": v for k, v in chosen["fusion"].items()})
            mlflow.log_metrics({f"rag_eval/fit_cv_{k}": v for k, v in fit["cross_validated"].items()})
            mlflow.log_dict(fit, "rag_eval/fit.json")
            mlflow.log_text(yaml.safe_dump({"serve": {"search": chosen}}, sort_keys=False),
                            "rag_eval/fitted_search.yaml")
    return run.info.run_id


def squad_target(path: Path, cfg: Config, state_dir: Path,
                 max_questions: int | None) -> tuple[dict[str, Any], list[Question], dict[str, Any]]:
    """A SQuAD file's passages indexed into their own table (incremental across calls) and its questions."""
    from lifecycle.rag.index import build_index
    from lifecycle.rag.search import rag_dir

    docs, questions = load_squad(path)
    questions = questions[:max_questions] if max_questions else questions
    table = "squad_" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    info = build_index(docs, cfg.rag_index, str(rag_dir(state_dir) / "eval" / "lancedb"), table).to_dict()
    return info, questions, {"dataset": str(path), "passages": len(docs), "chunks": info["rows"],
                             "embedded_chunks": info["embedded_chunks"], "table": f"{info['uri']}#{table}"}


def current_target(cfg: Config, state_dir: Path,
                   max_questions: int | None) -> tuple[dict[str, Any], list[Question], dict[str, Any]]:
    """The index the last rag_index run built and python-docs questions about its objects (held-out first)."""
    from lifecycle.rag.search import open_table, read_current

    info = read_current(state_dir)
    questions = python_docs_questions(indexed_documents(open_table(info["uri"], info["table"], info["version"])),
                                      max_questions or cfg.rag_index.evaluate.max_questions,
                                      cfg.rag_index.evaluate.question_template)
    if not questions:
        raise InputError(f"the index {info['uri']}#{info['table']} has no python-docs objects to ask about; "
                         "use --squad FILE")
    return info, questions, {"dataset": "python-docs", "table": f"{info['uri']}#{info['table']}",
                             "version": info["version"], "index_key": info.get("key")}


def run_eval_retrieval(cfg: Config, state_dir: Path, squad: Path | None = None, max_questions: int | None = None,
                       fit: bool = False) -> dict[str, Any]:
    """`lifecycle eval-retrieval`: recall@k (with intervals), MRR and latency of each mode on python-docs
    questions (or a SQuAD file), logged to MLflow. With `fit`, the fusion and title boost are first fitted on
    the same questions (fit.py); the report then measures the fitted settings, with the configured hybrid
    search as `hybrid_configured`, and the result holds the chosen values."""
    from lifecycle.rag.search import open_index

    info, questions, meta = (squad_target(squad, cfg, state_dir, max_questions) if squad else
                             current_target(cfg, state_dir, max_questions))
    ks, spec = cfg.rag_index.evaluate.ks, cfg.evaluate.intervals.model_dump()
    retriever = open_index(info, cfg.serve.search)
    fitted = None
    if fit:
        from lifecycle.rag.fit import fit_search

        fitted = fit_search(retriever, questions, cfg.rag_index.evaluate.fit, ks)
        configured = evaluate_retrieval(retriever, questions, ks, ("hybrid",), spec)["hybrid"]
        retriever.cfg = fitted.search
    report = evaluate_retrieval(retriever, questions, ks, intervals=spec)
    if fitted is not None:
        report = {"hybrid_configured": configured} | report
    name = f"eval-retrieval-{Path(squad).stem if squad else 'python-docs'}" + ("-fit" if fit else "")
    run_id = log_retrieval_eval(state_dir, cfg.run.experiment, name, report,
                                {k: v for k, v in meta.items() if v is not None} |
                                {"questions": len(questions), "embed_model": info["embed"]["model"],
                                 "rerank_model": str(cfg.serve.search.rerank.model)},
                                fitted.to_dict() if fitted else None)
    return meta | {"questions": len(questions), "mlflow_run_id": run_id, "report": report} | (
        {"fit": fitted.to_dict(), "overlay": fitted.overlay()} if fitted else {})


def evaluate_squad(path: Path, cfg: Config, state_dir: Path, max_questions: int | None = None,
                   fit: bool = False) -> dict[str, Any]:
    """The questions of a SQuAD-format file over its own passages (`run_eval_retrieval`)."""
    return run_eval_retrieval(cfg, state_dir, Path(path), max_questions, fit)


def evaluate_current(cfg: Config, state_dir: Path, max_questions: int | None = None,
                     fit: bool = False) -> dict[str, Any]:
    """python-docs questions against the index the last rag_index run built (`run_eval_retrieval`)."""
    return run_eval_retrieval(cfg, state_dir, None, max_questions, fit)
