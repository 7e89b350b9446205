"""ingest task: read the configured sources into a de-duplicated, split Arrow dataset."""

from __future__ import annotations

import json

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from lifecycle.store import StageOutput
from tasks.common import RunContext, StageDirs, StageResult, run_stage
from tasks.retries import STAGE_RETRIES


@task(name="ingest", cache_policy=NO_CACHE, **STAGE_RETRIES)
def ingest(ctx: RunContext) -> StageOutput:
    section = ctx.cfg.ingest

    def work(dirs: StageDirs) -> StageResult:
        from lifecycle.data.ingest import ingest_documents, load_documents
        from lifecycle.engine import Engine

        out = dirs.out
        stats = ingest_documents(section, out, Engine.from_config(ctx.cfg.run))
        docs = load_documents(out)
        for split, ds in docs.items():
            if len(ds):  # MLflow's digest of an empty split raises; validate refuses a corpus that small
                mlflow.log_input(mlflow.data.from_huggingface(ds, name=f"documents-{split}"), context=split)
        mlflow.log_dict(json.loads((out / "stats.json").read_text()), "ingest/stats.json")
        mlflow.log_params({f"source.{s.name}": s.kind for s in section.sources})
        return StageResult(stats)

    return run_stage("ingest", ctx, {}, work)
