"""rag_index task: bring the persistent LanceDB chunk table up to date with the ingested documents
(incrementally), evaluate retrieval on python-docs questions, pair the index with the registered model,
and point `<state_dir>/rag/current.json` at it for `lifecycle search` / `lifecycle ask`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import lifecycle.rag.chunk
import lifecycle.rag.embed
import lifecycle.rag.evaluate
import lifecycle.rag.index
import lifecycle.rag.search
from lifecycle.config import Config, RagIndexConfig
from lifecycle.data.ingest import load_documents
from lifecycle.rag.evaluate import (
    evaluate_retrieval,
    python_docs_questions,
    report_markdown,
)
from lifecycle.rag.index import build_index
from lifecycle.rag.search import open_index, rag_dir, write_current
from lifecycle.store import StageOutput, code_hash
from lifecycle.tracking import latest_model_version
from tasks.common import RunContext, StageDirs, run_stage

CODE = (lifecycle.rag.chunk, lifecycle.rag.embed, lifecycle.rag.index, lifecycle.rag.search, lifecycle.rag.evaluate)


@task(name="rag_index", cache_policy=NO_CACHE)
def rag_index(cfg: Config, docs: StageOutput, ctx: RunContext) -> StageOutput:
    section = cfg.rag_index
    state_dir = Path(ctx.state_dir)

    def work(dirs: StageDirs) -> dict[str, float]:
        documents = read_documents(Path(docs.path))
        info = build_index(documents, section, str(rag_dir(state_dir) / "lancedb"), section.table).to_dict()
        (dirs.out / "index.json").write_text(json.dumps(info | {"key": dirs.key}, indent=2))
        mlflow.log_dict(info, "rag_index/index.json")
        mlflow.log_params({"embed_model": section.embed.model, "embed_dtype": section.embed.dtype,
                           "embed_dtype_resolved": info["dtype"], "chunk_unit": section.chunk.unit,
                           "chunk_size": section.chunk.size, "chunk_overlap": section.chunk.overlap,
                           "ann": info["ann"], "table": section.table})
        metrics = {k: float(info[k]) for k in ("rows", "documents", "new_documents", "changed_documents",
                                               "removed_documents",
                                               "embedded_chunks", "reused_chunks", "deleted_chunks", "embed_seconds")}
        metrics["table_version"] = float(info["version"])
        if info["embedded_chunks"]:
            metrics["embed_chunks_per_s"] = info["embedded_chunks"] / max(info["embed_seconds"], 1e-9)
        metrics |= evaluate_index(info, documents, section, dirs.out)
        paired = pair_with_model(cfg.run.registered_model, info, dirs.key)
        mlflow.set_tag("lifecycle.paired_model_version", f"{cfg.run.registered_model}/{paired}" if paired else "none")
        return metrics

    output = run_stage("rag_index", ctx, section, {"ingest": docs}, code_hash(*CODE), work)
    info = json.loads(output.file("index.json").read_text())
    if output.cached:  # a model registered since the index was built serves with it too
        pair_with_model(cfg.run.registered_model, info, output.key)
    write_current(state_dir, info | {"key": output.key, "path": output.path, "run_id": output.run_id})
    get_run_logger().info("rag_index: %s table %s version %d is current (%d rows)", info["uri"], info["table"],
                          info["version"], info["rows"])
    return output


def read_documents(path: Path) -> list[dict[str, Any]]:
    """Every ingested document (train and validation) as a dict."""
    splits = load_documents(path)
    return [row for split in splits.values() for row in split.to_list()]


def evaluate_index(info: dict[str, Any], documents: list[dict[str, Any]], section: RagIndexConfig,
                   out: Path) -> dict[str, float]:
    """recall@k / MRR of dense, full-text and hybrid search on python-docs questions; logged and returned."""
    logger = get_run_logger()
    questions = python_docs_questions(documents, section.evaluate.max_questions, section.evaluate.question_template)
    if not questions:
        logger.info("rag_index: no documents with an `object` (python-docs) or evaluate.max_questions = 0: "
                    "retrieval evaluation skipped")
        return {}
    report = evaluate_retrieval(open_index(info, section), questions, section.evaluate.ks)
    markdown = report_markdown(report, "Retrieval on python-docs questions")
    (out / "retrieval_eval.json").write_text(json.dumps(report, indent=2))
    (out / "retrieval_eval.md").write_text(markdown + "\n")
    mlflow.log_table(pd.DataFrame([{"mode": m} | row for m, row in report.items()]), "rag_index/retrieval_eval.json")
    mlflow.log_text(markdown, "rag_index/retrieval_eval.md")
    create_markdown_artifact(key="rag-retrieval-eval", markdown=markdown,
                             description="recall@k and MRR of dense, full-text and hybrid retrieval")
    logger.info("rag_index: %s", "; ".join(f"{m} recall@{max(section.evaluate.ks)} "
                                            f"{r[f'recall_at_{max(section.evaluate.ks)}']:.3f} MRR {r['mrr']:.3f}"
                                            for m, r in report.items()))
    return {f"{mode}_{name}": value for mode, row in report.items() for name, value in row.items()
            if name != "questions"} | {"eval_questions": float(len(questions))}


def pair_with_model(registered_model: str, info: dict[str, Any], key: str) -> str | None:
    """Tag the newest version of the registered model with this index; None when no model is registered."""
    client = MlflowClient()
    latest = latest_model_version(client, registered_model)
    if latest is None:
        get_run_logger().info("rag_index: no model registered as '%s' yet: index not paired", registered_model)
        return None
    tags = {"lifecycle.rag_index_version": str(info["version"]), "lifecycle.rag_index_key": key,
            "lifecycle.rag_index_table": f"{info['uri']}#{info['table']}"}
    for name, value in tags.items():
        client.set_model_version_tag(registered_model, latest.version, name, value)
    get_run_logger().info("rag_index: paired with %s version %s", registered_model, latest.version)
    return str(latest.version)
