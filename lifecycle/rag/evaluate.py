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


def _stable_order(value: str, seed: int) -> str:
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
    ranked = sorted(by_object, key=lambda o: (o not in held_out, _stable_order(o, seed)))
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
                       modes: tuple[Mode, ...] = MODES) -> dict[str, dict[str, float]]:
    """{mode: {recall_at_k..., mrr, p50_ms, questions}} over `questions` (query vectors embedded once)."""
    depth = max(ks)
    vectors = retriever.embedder.embed([q.text for q in questions], desc="embed questions")
    report: dict[str, dict[str, float]] = {}
    for mode in modes:
        ranks: list[int | None] = []
        times: list[float] = []
        for question, qvec in progress(list(zip(questions, vectors)), desc=f"evaluate {mode}", logger=log):
            started = time.perf_counter()
            if mode == "dense":
                hits = retriever.dense(qvec, depth)
            elif mode == "fts":
                hits = retriever.fts(question.text, depth)
            else:
                hits = retriever.hybrid(qvec, question.text, depth)
            times.append(time.perf_counter() - started)
            ranks.append(rank_of_first_relevant([h.doc_id for h in hits], question.relevant))
        report[mode] = summarize(ranks, ks) | {"p50_ms": 1000 * sorted(times)[len(times) // 2] if times else 0.0}
    return report


def summarize(ranks: list[int | None], ks: list[int]) -> dict[str, float]:
    n = len(ranks) or 1
    out = {f"recall_at_{k}": sum(1 for r in ranks if r is not None and r <= k) / n for k in sorted(ks)}
    out["mrr"] = sum(1.0 / r for r in ranks if r is not None) / n
    out["questions"] = float(len(ranks))
    return out


def report_markdown(report: dict[str, dict[str, float]], title: str) -> str:
    """The comparison as a markdown table (modes as rows)."""
    metrics = [m for m in next(iter(report.values())) if m.startswith("recall_at_")] + ["mrr", "p50_ms"]
    lines = [f"### {title}", "", "| mode | " + " | ".join(m.replace("_at_", "@") for m in metrics) + " |",
             "|---|" + "---:|" * len(metrics)]
    for mode, row in report.items():
        lines.append(f"| {mode} | " + " | ".join(f"{row[m]:.3f}" if m != "p50_ms" else f"{row[m]:.1f}"
                                                 for m in metrics) + " |")
    n = int(next(iter(report.values()))["questions"])
    return "\n".join(lines + ["", f"{n} questions; recall@k = share with a relevant chunk in the top k."])


def indexed_documents(retriever: Retriever) -> list[dict[str, Any]]:
    """The documents of an index as {id, object, split} (for python-docs questions without the ingest output)."""
    rows = retriever.tbl.search().select(["doc_id", "object", "split"]).limit(None).to_list()
    return list({r["doc_id"]: {"id": r["doc_id"], "object": r["object"], "split": r["split"]} for r in rows}.values())


def log_retrieval_eval(state_dir: Path, experiment: str, name: str, report: dict[str, dict[str, float]],
                       params: dict[str, Any]) -> str:
    """One MLflow run with the comparison (metrics `rag_eval/<mode>_<metric>`, a table and markdown); its id."""
    import mlflow
    import pandas as pd

    from lifecycle.tracking import setup_mlflow

    experiment_id = setup_mlflow(Path(state_dir), experiment)
    tags = {"lifecycle.stage": "eval-retrieval"}
    with mlflow.start_run(run_name=name, experiment_id=experiment_id, tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics({f"rag_eval/{mode}_{k}": v for mode, row in report.items() for k, v in row.items()})
        mlflow.log_table(pd.DataFrame([{"mode": m} | row for m, row in report.items()]), "rag_eval/retrieval_eval.json")
        mlflow.log_text(report_markdown(report, name), "rag_eval/retrieval_eval.md")
    return run.info.run_id


def evaluate_squad(path: Path, cfg: Config, state_dir: Path, max_questions: int | None = None) -> dict[str, Any]:
    """Index a SQuAD file's passages into their own table (incremental across calls), ask its questions,
    compare the three modes and log the comparison to MLflow."""
    from lifecycle.rag.index import build_index
    from lifecycle.rag.search import open_index, rag_dir

    docs, questions = load_squad(path)
    questions = questions[:max_questions] if max_questions else questions
    table = "squad_" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    info = build_index(docs, cfg.rag_index, str(rag_dir(state_dir) / "eval" / "lancedb"), table).to_dict()
    report = evaluate_retrieval(open_index(info, cfg.serve.search), questions, cfg.rag_index.evaluate.ks)
    run_id = log_retrieval_eval(state_dir, cfg.run.experiment, f"eval-retrieval-{Path(path).stem}", report,
                                {"dataset": str(path), "questions": len(questions), "passages": len(docs),
                                 "chunks": info["rows"], "embed_model": cfg.rag_index.embed.model})
    return {"dataset": str(path), "passages": len(docs), "questions": len(questions), "chunks": info["rows"],
            "embedded_chunks": info["embedded_chunks"], "table": f"{info['uri']}#{table}", "mlflow_run_id": run_id,
            "report": report}


def evaluate_current(cfg: Config, state_dir: Path, max_questions: int | None = None) -> dict[str, Any]:
    """python-docs questions against the index the last rag_index run built, logged to MLflow."""
    from lifecycle.rag.search import open_index, read_current

    info = read_current(state_dir)
    retriever = open_index(info, cfg.serve.search)
    questions = python_docs_questions(indexed_documents(retriever),
                                      max_questions or cfg.rag_index.evaluate.max_questions,
                                      cfg.rag_index.evaluate.question_template)
    if not questions:
        raise InputError(f"the index {info['uri']}#{info['table']} has no python-docs objects to ask about; "
                         "use --squad FILE")
    report = evaluate_retrieval(retriever, questions, cfg.rag_index.evaluate.ks)
    run_id = log_retrieval_eval(state_dir, cfg.run.experiment, "eval-retrieval-python-docs", report,
                                {"dataset": "python-docs", "questions": len(questions), "index_key": info["key"],
                                 "index_version": info["version"]})
    return {"dataset": "python-docs", "questions": len(questions), "table": f"{info['uri']}#{info['table']}",
            "version": info["version"], "mlflow_run_id": run_id, "report": report}
