"""The pretrain stage as a flow: a subflow of the pipeline, or run alone (e.g. on a GPU work pool) on
the cached tokenize output."""

from prefect import flow

from lifecycle.runtime import RunSettings
from lifecycle.store import StageOutput
from tasks.common import RunContext, stage_scope
from tasks.pretrain import pretrain


@flow(name="pretrain", flow_run_name="pretrain")
def pretrain_flow(settings: RunSettings = RunSettings(), ctx: RunContext | None = None,
                  tokenize: StageOutput | None = None) -> StageOutput:
    with stage_scope("pretrain", ctx, settings, {"tokenize": tokenize}) as (ctx, inputs):
        return pretrain(ctx, inputs["tokenize"])
