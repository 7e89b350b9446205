"""The tokenize stage: train the BPE tokenizer (or take pretrain.init's own, `tokenize.tokenizer: from_model`) and
pack the documents into token blocks."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from lifecycle.hub import init_checkpoint
from lifecycle.names import TOKENIZER_KEY
from lifecycle.stages import Stage
from lifecycle.store import StageOutput
from tasks.common import RunContext, StageDirs, StageResult, check_init, init_extras, run_stage
from tasks.retries import STAGE_RETRIES


@task(name="tokenize", cache_policy=NO_CACHE, **STAGE_RETRIES)
def tokenize(ctx: RunContext, inputs: dict[str, StageOutput]) -> StageOutput:
    section, docs = ctx.cfg.tokenize, inputs["ingest"]

    def work(dirs: StageDirs) -> StageResult:
        from lifecycle.engine import Engine
        from lifecycle.tokenizer import train_and_pack

        out, init = dirs.out, ctx.cfg.pretrain
        checkpoint = init_checkpoint(ctx.cfg) if section.tokenizer == "from_model" else None
        stats = train_and_pack(section, Path(docs.path), out, Engine.from_config(ctx.cfg.run),
                               checkpoint.folder if checkpoint else None, init.trust_remote_code)
        mlflow.log_artifacts(str(out / "tokenizer"), "tokenizer")
        mlflow.log_dict(json.loads((out / "stats.json").read_text()), "tokenize/stats.json")
        mlflow.log_params({"tokenizer": checkpoint.identity if checkpoint else "train",
                           "vocab_size": int(stats["vocab_size"]), "context_length": int(stats["context_length"])})
        return StageResult(stats)

    return run_stage(STAGE, ctx, inputs, work)


STAGE = Stage("tokenize", __name__, inputs=("ingest",), after=("validate",), run=tokenize, check=check_init,
              extras=lambda cfg: init_extras(cfg) if cfg.tokenize.tokenizer == "from_model" else {},
              lineage=lambda out: {TOKENIZER_KEY: out.identity},
              produces="a tokenizer with a chat template (trained, or the checkpoint's), and packed token blocks")
