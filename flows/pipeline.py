"""The pipeline flow: ingest -> validate -> tokenize (-> later stages), one Prefect flow run and one
MLflow parent run, each stage a task and an MLflow child run. Run it with `lifecycle run`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow

from lifecycle.config import find_conf_dir, load_config
from lifecycle.runtime import resolve_state_dir
from lifecycle.stages import plan_stages
from tasks.common import pipeline_run
from tasks.ingest import ingest
from tasks.pretrain import pretrain
from tasks.rag_index import rag_index
from tasks.tokenize import tokenize
from tasks.validate import validate


@flow(name="lifecycle-pipeline", flow_run_name="pipeline-{profile}")
def pipeline(profile: str = "default", overrides: list[str] | None = None, sources: list[str] | None = None,
             until: str | None = None, from_stage: str | None = None, state_dir: str | None = None,
             conf_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """Parameters mirror `lifecycle run`, so deployments and schedules (infra/prefect.yaml) read the same."""
    cfg = load_config(find_conf_dir(conf_dir), None if profile == "default" else profile, overrides, sources)
    plan = plan_stages(until, from_stage)
    outputs = {}
    state = resolve_state_dir(state_dir, cfg.run.state_dir)
    with pipeline_run(cfg, state, plan, profile) as ctx:
        outputs["ingest"] = docs = ingest(cfg, ctx)
        outputs["validate"] = validate(cfg, docs, ctx)
        if ctx.wants("tokenize"):
            outputs["tokenize"] = tokens = tokenize(cfg, docs, ctx)
        if ctx.wants("pretrain"):
            outputs["pretrain"] = pretrain(cfg, tokens, ctx)
        if ctx.wants("rag_index"):
            outputs["rag_index"] = rag_index(cfg, docs, ctx)
    return {stage: asdict(out) for stage, out in outputs.items()}
