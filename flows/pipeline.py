"""The pipeline flow: one Prefect flow run and one MLflow parent run; every stage is a flow of its own
(flows/<stage>.py) called here as a subflow, and an MLflow child run. The calls below follow the stage
graph in lifecycle/stages.py (tests/unit/test_stages.py checks that they agree). Run it with
`lifecycle run`; deployments in infra/prefect.yaml."""

from dataclasses import asdict
from typing import Any

from prefect import flow

from flows.evaluate import evaluate_flow
from flows.ingest import ingest_flow
from flows.preferences import preferences_flow
from flows.pretrain import pretrain_flow
from flows.promote import promote_flow
from flows.rag_index import rag_index_flow
from flows.rlhf import rlhf_flow
from flows.sft import sft_flow
from flows.tokenize import tokenize_flow
from flows.validate import validate_flow
from lifecycle.runtime import RunSettings, no_heartbeats_on_temporary_api
from lifecycle.stages import plan_stages
from lifecycle.store import StageOutput
from tasks.common import check_trainer_sections, pipeline_run
from tasks.registry import mark_challenger


@flow(name="lifecycle-pipeline", flow_run_name="pipeline-{profile}")
def pipeline(profile: str = "default", overrides: list[str] | None = None, sources: list[str] | None = None,
             until: str | None = None, from_stage: str | None = None, state_dir: str | None = None,
             conf_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """Parameters mirror `lifecycle run`, so deployments and schedules (infra/prefect.yaml) read the same."""
    settings = RunSettings(profile=profile, overrides=overrides or [], sources=sources or [], state_dir=state_dir,
                           conf_dir=conf_dir)
    plan = plan_stages(until, from_stage)
    cfg = settings.load()
    out: dict[str, StageOutput] = {}
    with pipeline_run(settings, cfg, plan) as ctx, no_heartbeats_on_temporary_api():
        check_trainer_sections(cfg, plan.run, ctx)  # before any work; skips the stages that will be cache hits
        out["ingest"] = ingest_flow(ctx=ctx)
        if ctx.wants("validate"):
            out["validate"] = validate_flow(ctx=ctx, ingest=out["ingest"])
        if ctx.wants("tokenize"):
            out["tokenize"] = tokenize_flow(ctx=ctx, ingest=out["ingest"])
        if ctx.wants("pretrain"):
            out["pretrain"] = pretrain_flow(ctx=ctx, tokenize=out["tokenize"])
        if ctx.wants("sft"):
            out["sft"] = sft_flow(ctx=ctx, pretrain=out["pretrain"], ingest=out["ingest"])
        if ctx.wants("preferences"):
            out["preferences"] = preferences_flow(ctx=ctx, sft=out["sft"], ingest=out["ingest"])
        if ctx.wants("rlhf"):
            out["rlhf"] = rlhf_flow(ctx=ctx, sft=out["sft"], preferences=out["preferences"])
        chat = next((out[s].model for s in ("rlhf", "sft") if s in out), None)  # the run's final chat model
        if ctx.wants("rag_index"):
            out["rag_index"] = rag_index_flow(ctx=ctx, ingest=out["ingest"], model=chat)
        if chat:
            mark_challenger(ctx, chat, out)
        if ctx.wants("evaluate"):
            out["evaluate"] = evaluate_flow(ctx=ctx, ingest=out["ingest"], pretrain=out["pretrain"], sft=out["sft"],
                                            rlhf=out["rlhf"], rag_index=out["rag_index"])
        if ctx.wants("promote"):
            out["promote"] = promote_flow(ctx=ctx, evaluate=out["evaluate"])
    return {stage: asdict(output) for stage, output in out.items()}

