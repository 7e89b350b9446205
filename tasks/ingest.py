"""ingest task: read the configured sources into a de-duplicated, split Arrow dataset."""

from __future__ import annotations

import json

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

import lifecycle.data.clean
import lifecycle.data.ingest
import lifecycle.data.sources
from lifecycle.config import Config
from lifecycle.data.ingest import ingest_documents, load_documents
from lifecycle.data.sources import fingerprint
from lifecycle.store import StageOutput, code_hash
from tasks.common import RunContext, StageDirs, run_stage


@task(name="ingest", cache_policy=NO_CACHE)
def ingest(cfg: Config, ctx: RunContext) -> StageOutput:
    section = cfg.ingest

    def work(dirs: StageDirs) -> dict[str, float]:
        out = dirs.out
        stats = ingest_documents(section, out)
        docs = load_documents(out)
        for split, ds in docs.items():
            mlflow.log_input(mlflow.data.from_huggingface(ds, name=f"documents-{split}"), context=split)
        mlflow.log_dict(json.loads((out / "stats.json").read_text()), "ingest/stats.json")
        mlflow.log_params({f"source.{s.name}": s.kind for s in section.sources})
        return stats

    sources = {f"source.{s.name}": fingerprint(s) for s in section.sources}
    code = code_hash(lifecycle.data.ingest, lifecycle.data.sources, lifecycle.data.clean)
    return run_stage("ingest", ctx, section, {}, code, work, extra_key=sources)
