"""The ingest stage: read the configured sources (their contents are in the key) into a de-duplicated,
split Arrow dataset."""

from __future__ import annotations

import json

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from lifecycle.config import Config
from lifecycle.names import DATA_KEY
from lifecycle.stages import Stage
from lifecycle.store import StageOutput
from tasks.common import RunContext, StageDirs, StageResult, run_stage
from tasks.retries import STAGE_RETRIES


@task(name="ingest", cache_policy=NO_CACHE, **STAGE_RETRIES)
def ingest(ctx: RunContext, inputs: dict[str, StageOutput]) -> StageOutput:
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

    return run_stage(STAGE, ctx, inputs, work)


def source_hashes(cfg: Config) -> dict[str, str]:
    """What the key takes from the sources: each one's content fingerprint."""
    from lifecycle.data.sources import fingerprint

    return {f"source.{s.name}": fingerprint(s) for s in cfg.ingest.sources}


STAGE = Stage("ingest", __name__, inputs=(), run=ingest, extras=source_hashes,
              lineage=lambda out: {DATA_KEY: out.identity},
              produces="documents: normalised, de-duplicated, split train/validation (Arrow)")
