"""The pipeline flow: one Prefect flow run and one MLflow parent run; every stage of the plan is a flow of
its own (flows/stages.py), called here as a subflow in graph order (tasks/graph.py) with the outputs it
reads, and an MLflow child run. Before the stage that measures the candidate (evaluate), the run's last chat
model becomes `@candidate` and `@challenger` (tasks/registry.py). Run it with `lifecycle run`; deployments
in infra/prefect.yaml."""

from dataclasses import asdict
from typing import Any

from prefect import flow

from flows.stages import FLOWS
from lifecycle.registry import ModelRef
from lifecycle.runtime import RunSettings, no_heartbeats_on_temporary_api
from lifecycle.store import StageOutput
from tasks.common import check_stages
from tasks.context import pipeline_run
from tasks.graph import GRAPH
from tasks.registry import mark_challenger


@flow(name="lifecycle-pipeline", flow_run_name="pipeline-{profile}")
def pipeline(profile: str = "default", overrides: list[str] | None = None, sources: list[str] | None = None,
             until: list[str] | str | None = None, from_stage: str | None = None, state_dir: str | None = None,
             conf_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """Parameters mirror `lifecycle run`, so deployments and schedules (infra/prefect.yaml) read the same."""
    settings = RunSettings(profile=profile, overrides=overrides or [], sources=sources or [], state_dir=state_dir,
                           conf_dir=conf_dir)
    plan = GRAPH.plan(until, from_stage)
    cfg = settings.load()
    out: dict[str, StageOutput] = {}
    marked = False
    with pipeline_run(settings, cfg, plan) as ctx, no_heartbeats_on_temporary_api():
        check_stages(cfg, plan.run, ctx)  # before any work; skips the stages that will be cache hits
        for stage in (GRAPH[name] for name in plan.run):
            if stage.candidate and (chat := last_chat_model(out)):
                mark_challenger(ctx, chat, out)
                marked = True
            model = next((out[s].model for s in reversed(stage.uses) if s in out), None)
            out[stage.name] = FLOWS[stage.name](ctx=ctx, inputs={name: out[name] for name in stage.inputs},
                                                **({"model": model} if stage.uses else {}))
        if not marked and (chat := last_chat_model(out)):
            mark_challenger(ctx, chat, out)
    return {stage: asdict(output) for stage, output in out.items()}


def last_chat_model(out: dict[str, StageOutput]) -> ModelRef | None:
    """The run's final chat model: that of the last stage in graph order that registered one."""
    return next((out[s].model for s in reversed(GRAPH.names) if s in out and GRAPH[s].model == "chat"), None)
