"""The pipeline flow: ingest -> validate -> tokenize (-> later stages), one Prefect flow run and one
MLflow parent run, each stage a task and an MLflow child run. Run it with `lifecycle run`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow

from lifecycle.config import Config
from lifecycle.stages import plan_stages
from tasks.common import pipeline_run
from tasks.ingest import ingest
from tasks.tokenize import tokenize
from tasks.validate import validate


@flow(name="lifecycle-pipeline", flow_run_name="pipeline-{profile}", validate_parameters=False)
def pipeline(config: dict[str, Any], state_dir: str, profile: str = "default", until: str | None = None,
             from_stage: str | None = None) -> dict[str, dict[str, Any]]:
    cfg = Config.model_validate(config)
    plan = plan_stages(until, from_stage)
    outputs = {}
    with pipeline_run(cfg, Path(state_dir), plan, profile) as ctx:
        outputs["ingest"] = docs = ingest(cfg, ctx)
        outputs["validate"] = validate(cfg, docs, ctx)
        if ctx.wants("tokenize"):
            outputs["tokenize"] = tokenize(cfg, docs, ctx)
    return {stage: asdict(out) for stage, out in outputs.items()}
