"""One flow per stage, all from one factory: each a subflow of the pipeline (flows/pipeline.py), or run alone
on the cached outputs it reads (a deployment: infra/prefect.yaml names them as `flows/stages.py:<stage>_flow`).
Run alone, a stage gets a parent run of its own and reads its inputs from the cache for the current config;
a stage that `uses` a model takes it by reference (`model`: a ModelRef or "NAME@ALIAS", e.g. a nightly RAG
rebuild paired with "lifecycle-gpt@champion")."""

from prefect import Flow, flow

from lifecycle.registry import ModelRef, resolve
from lifecycle.runtime import RunSettings
from lifecycle.stages import Stage
from lifecycle.store import StageOutput
from tasks.common import stage_scope
from tasks.context import RunContext
from tasks.graph import GRAPH


def stage_flow(stage: Stage) -> Flow:
    def run_stage_flow(settings: RunSettings = RunSettings(), ctx: RunContext | None = None,
                       inputs: dict[str, StageOutput] | None = None,
                       model: ModelRef | str | None = None) -> StageOutput:
        with stage_scope(stage, ctx, settings, inputs or {}) as (scope, found):
            if stage.uses:
                output = stage.run(scope, found, resolve(model) if isinstance(model, str) else model)
            else:
                output = stage.run(scope, found)
        if ctx is None and stage.announce:  # a deployment running it alone: its result may trigger the next
            stage.announce(output, settings)
        return output

    run_stage_flow.__name__ = run_stage_flow.__qualname__ = f"{stage.name}_flow"
    run_stage_flow.__doc__ = f"The {stage.name} stage as a flow: {stage.produces}."
    return flow(run_stage_flow, name=stage.name, flow_run_name=stage.name)


FLOWS: dict[str, Flow] = {stage.name: stage_flow(stage) for stage in GRAPH}
globals().update({f"{name}_flow": found for name, found in FLOWS.items()})  # entry points: `<stage>_flow`
