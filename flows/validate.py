"""The validate stage as a flow: a subflow of the pipeline, or run alone on the cached ingest output."""

from prefect import flow

from lifecycle.runtime import RunSettings
from lifecycle.store import StageOutput
from tasks.common import RunContext, stage_scope
from tasks.validate import validate


@flow(name="validate", flow_run_name="validate")
def validate_flow(settings: RunSettings = RunSettings(), ctx: RunContext | None = None,
                  ingest: StageOutput | None = None) -> StageOutput:
    with stage_scope("validate", ctx, settings, {"ingest": ingest}) as (ctx, inputs):
        return validate(ctx, inputs["ingest"])
