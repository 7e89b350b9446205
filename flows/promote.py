"""The promote stage as a flow: the gate over the evaluation, a subflow of the pipeline, or run alone on
the cached evaluate output."""

from prefect import flow

from lifecycle.runtime import RunSettings
from lifecycle.store import StageOutput
from tasks.common import RunContext, stage_scope
from tasks.promote import promote


@flow(name="promote", flow_run_name="promote")
def promote_flow(settings: RunSettings = RunSettings(), ctx: RunContext | None = None,
                 evaluate: StageOutput | None = None) -> StageOutput:
    with stage_scope("promote", ctx, settings, {"evaluate": evaluate}) as (ctx, inputs):
        return promote(ctx, inputs["evaluate"])
