"""The tokenize stage: train the BPE tokenizer and pack the documents into token blocks."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from lifecycle.names import TOKENIZER_KEY
from lifecycle.stages import Stage
from lifecycle.store import StageOutput
from tasks.common import RunContext, StageDirs, StageResult, run_stage
from tasks.retries import STAGE_RETRIES


@task(name="tokenize", cache_policy=NO_CACHE, **STAGE_RETRIES)
def tokenize(ctx: RunContext, inputs: dict[str, StageOutput]) -> StageOutput:
    section, docs = ctx.cfg.tokenize, inputs["ingest"]

    def work(dirs: StageDirs) -> StageResult:
        from lifecycle.engine import Engine
        from lifecycle.tokenizer import train_and_pack

        out = dirs.out
        stats = train_and_pack(section, Path(docs.path), out, Engine.from_config(ctx.cfg.run))
        mlflow.log_artifacts(str(out / "tokenizer"), "tokenizer")
        mlflow.log_dict(json.loads((out / "stats.json").read_text()), "tokenize/stats.json")
        mlflow.log_params({"vocab_size": section.vocab_size, "context_length": section.context_length})
        return StageResult(stats)

    return run_stage(STAGE, ctx, inputs, work)


STAGE = Stage("tokenize", __name__, inputs=("ingest",), after=("validate",), run=tokenize,
              lineage=lambda out: {TOKENIZER_KEY: out.identity},
              produces="a byte-level BPE tokenizer with a chat template, and packed token blocks")
