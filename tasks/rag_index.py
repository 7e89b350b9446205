"""The rag_index stage: bring the persistent LanceDB chunk table up to date with the ingested documents
(incrementally), evaluate retrieval on python-docs questions, pin the version it produced, pair it with
the model it is given (by reference: the run's chat model), point `<state_dir>/rag/current.json` at it
for `lifecycle search`, and clean up table versions nothing refers to any more."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lifecycle import names
from lifecycle.config import Config
from lifecycle.hashing import hash_json
from lifecycle.rag.evaluate import evaluate_retrieval, python_docs_questions, report_markdown
from lifecycle.rag.pairing import pair_index
from lifecycle.rag.retention import open_dataset, pin_version, referenced_versions, retain_versions
from lifecycle.rag.search import open_index, open_table, rag_dir, write_current
from lifecycle.registry import ModelRef
from lifecycle.stages import Stage
from lifecycle.store import StageOutput
from tasks.common import RunContext, StageDirs, StageResult, run_stage
from tasks.retries import STAGE_RETRIES


@task(name="rag_index", cache_policy=NO_CACHE, **STAGE_RETRIES)
def rag_index(ctx: RunContext, inputs: dict[str, StageOutput], model: ModelRef | None = None) -> StageOutput:
    cfg, docs = ctx.cfg, inputs["ingest"]
    section = cfg.rag_index
    state_dir = Path(ctx.state_dir)
    logger = get_run_logger()

    def work(dirs: StageDirs) -> StageResult:
        from lifecycle.data.ingest import read_documents
        from lifecycle.engine import Engine
        from lifecycle.rag.index import build_index

        documents = read_documents(docs.path)
        info = build_index(documents, section, str(rag_dir(state_dir) / "lancedb"), section.table,
                           engine=Engine.from_config(cfg.run), checkpoints=dirs.checkpoints).to_dict()
        pin_version(open_table(info["uri"], info["table"]), f"stage-{dirs.key}", info["version"])
        (dirs.out / "index.json").write_text(json.dumps(info | {"key": dirs.key}, indent=2))
        mlflow.log_dict(info, "rag_index/index.json")
        mlflow.log_params({"embed_model": section.embed.model, "embed_dtype": section.embed.dtype,
                           "embed_dtype_resolved": info["dtype"], "chunk_unit": section.chunk.unit,
                           "chunk_size": section.chunk.size, "chunk_overlap": section.chunk.overlap,
                           "ann": info["ann"], "table": section.table})
        metrics = {k: float(info[k]) for k in ("rows", "documents", "new_documents", "changed_documents",
                                               "removed_documents", "embedded_chunks", "reused_chunks",
                                               "deleted_chunks", "embed_shards", "resumed_shards",
                                               "embed_seconds")}
        metrics["table_version"] = float(info["version"])
        if info["embedded_chunks"]:
            metrics["embed_chunks_per_s"] = info["embedded_chunks"] / max(info["embed_seconds"], 1e-9)
        metrics |= evaluate_index(info, documents, cfg, dirs.out)
        return StageResult(metrics, tags={names.PAIRED_MODEL: str(model) if model else "none"})

    output = run_stage(STAGE, ctx, inputs, work)
    info = json.loads(output.file("index.json").read_text())
    if model is not None:
        pair_index(model, info, output.key)
        logger.info("rag_index: %s serves with table %s version %d", model, info["table"], info["version"])
    write_current(state_dir, info | {"key": output.key, "path": output.path, "run_id": output.run_id})
    tbl = open_dataset(info["uri"], info["table"])
    keep = referenced_versions(state_dir, info["uri"], info["table"], [cfg.run.models.chat, cfg.run.models.base])
    retain_versions(tbl, keep, section.retention.unreferenced_days)
    logger.info("rag_index: %s table %s version %d is current (%d rows)", info["uri"], info["table"],
                info["version"], info["rows"])
    return output


def evaluate_index(info: dict[str, Any], documents: list[dict[str, Any]], cfg: Config, out: Path) -> dict[str, float]:
    """recall@k (with its bootstrap interval: `<mode>_recall_at_<k>_low/_high/_n`) and MRR of dense, full-text
    and hybrid search (and the reranker, when configured) on python-docs questions; logged and returned."""
    logger = get_run_logger()
    section = cfg.rag_index.evaluate
    questions = python_docs_questions(documents, section.max_questions, section.question_template)
    if not questions:
        logger.info("rag_index: no documents with an `object` (python-docs) or evaluate.max_questions = 0: "
                    "retrieval evaluation skipped")
        return {}
    report = evaluate_retrieval(open_index(info, cfg.serve.search), questions, section.ks,
                                intervals=cfg.evaluate.intervals.model_dump())
    markdown = report_markdown(report, "Retrieval on python-docs questions")
    (out / "retrieval_eval.json").write_text(json.dumps(report, indent=2))
    (out / "retrieval_eval.md").write_text(markdown + "\n")
    mlflow.log_table(pd.DataFrame([{"mode": m} | row for m, row in report.items()]), "rag_index/retrieval_eval.json")
    mlflow.log_text(markdown, "rag_index/retrieval_eval.md")
    mlflow.log_dict(cfg.serve.search.model_dump(mode="json"), "rag_index/search_settings.json")
    create_markdown_artifact(key="rag-retrieval-eval", markdown=markdown,
                             description="recall@k and MRR of dense, full-text and hybrid retrieval")
    top = max(section.ks)
    logger.info("rag_index: %s", "; ".join(f"{m} recall@{top} {r[f'recall_at_{top}']:.3f} MRR {r['mrr']:.3f}"
                                            for m, r in report.items()))
    return {f"{mode}_{name}": value for mode, row in report.items() for name, value in row.items()
            if name != "questions"} | {"eval_questions": float(len(questions))}


def search_settings(cfg: Config) -> dict[str, str]:
    """What its retrieval evaluation measures: the search settings and the intervals (query-time settings;
    nothing is embedded again when only they change)."""
    return {"search": hash_json({"search": cfg.serve.search.model_dump(mode="json"),
                                 "intervals": cfg.evaluate.intervals.model_dump(mode="json")})}


STAGE = Stage("rag_index", __name__, inputs=("ingest",), after=("validate",), uses=("sft", "rlhf"), run=rag_index,
              extras=search_settings,
              produces="a version of the LanceDB chunk table and its retrieval metrics; paired with the run's model")
