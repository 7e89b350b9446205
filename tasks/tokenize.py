"""tokenize task: train the BPE tokenizer and pack the documents into token blocks."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

import lifecycle.tokenizer
from lifecycle.config import Config
from lifecycle.store import StageOutput, code_hash
from lifecycle.tokenizer import train_and_pack
from tasks.common import RunContext, StageDirs, run_stage


@task(name="tokenize", cache_policy=NO_CACHE)
def tokenize(cfg: Config, docs: StageOutput, ctx: RunContext) -> StageOutput:
    section = cfg.tokenize

    def work(dirs: StageDirs) -> dict[str, float]:
        out = dirs.out
        stats = train_and_pack(section, Path(docs.path), out)
        mlflow.log_artifacts(str(out / "tokenizer"), "tokenizer")
        mlflow.log_dict(json.loads((out / "stats.json").read_text()), "tokenize/stats.json")
        mlflow.log_params({"vocab_size": section.vocab_size, "context_length": section.context_length})
        return stats

    return run_stage("tokenize", ctx, section, {"ingest": docs}, code_hash(lifecycle.tokenizer), work)
