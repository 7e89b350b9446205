"""The rlhf stage as a flow: a subflow of the pipeline, or run alone on the cached sft and preferences
outputs (the SFT model comes by reference from the sft output)."""

from prefect import flow

from lifecycle.runtime import RunSettings
from lifecycle.store import StageOutput
from tasks.common import RunContext, stage_scope
from tasks.rlhf import rlhf


@flow(name="rlhf", flow_run_name="rlhf")
def rlhf_flow(settings: RunSettings = RunSettings(), ctx: RunContext | None = None, sft: StageOutput | None = None,
              preferences: StageOutput | None = None) -> StageOutput:
    with stage_scope("rlhf", ctx, settings, {"sft": sft, "preferences": preferences}) as (ctx, inputs):
        return rlhf(ctx, inputs["sft"], inputs["preferences"])
