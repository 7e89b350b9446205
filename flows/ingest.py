"""The ingest stage as a flow: a subflow of the pipeline, or run alone (a deployment refreshing the corpus)."""

from prefect import flow

from lifecycle.runtime import RunSettings
from lifecycle.store import StageOutput
from tasks.common import RunContext, stage_scope
from tasks.ingest import ingest


@flow(name="ingest", flow_run_name="ingest")
def ingest_flow(settings: RunSettings = RunSettings(), ctx: RunContext | None = None) -> StageOutput:
    with stage_scope("ingest", ctx, settings, {}) as (ctx, _):
        return ingest(ctx)
