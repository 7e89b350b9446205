"""The sft stage as a flow: a subflow of the pipeline, or run alone on the cached pretrain and ingest
outputs (the base model comes by reference from the pretrain output)."""

from prefect import flow

from lifecycle.runtime import RunSettings
from lifecycle.store import StageOutput
from tasks.common import RunContext, stage_scope
from tasks.sft import sft


@flow(name="sft", flow_run_name="sft")
def sft_flow(settings: RunSettings = RunSettings(), ctx: RunContext | None = None,
             pretrain: StageOutput | None = None, ingest: StageOutput | None = None) -> StageOutput:
    with stage_scope("sft", ctx, settings, {"pretrain": pretrain, "ingest": ingest}) as (ctx, inputs):
        return sft(ctx, inputs["pretrain"], inputs["ingest"])
