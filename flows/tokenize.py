"""The tokenize stage as a flow: a subflow of the pipeline, or run alone on the cached ingest output."""

from prefect import flow

from lifecycle.runtime import RunSettings
from lifecycle.store import StageOutput
from tasks.common import RunContext, stage_scope
from tasks.tokenize import tokenize


@flow(name="tokenize", flow_run_name="tokenize")
def tokenize_flow(settings: RunSettings = RunSettings(), ctx: RunContext | None = None,
                  ingest: StageOutput | None = None) -> StageOutput:
    with stage_scope("tokenize", ctx, settings, {"ingest": ingest}) as (ctx, inputs):
        return tokenize(ctx, inputs["ingest"])
