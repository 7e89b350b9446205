"""The preferences stage as a flow: publish a batch of comparison items, wait for the votes (mode
`human`), export the preference set. A subflow of the pipeline, or run alone on the cached sft and
ingest outputs (a deployment).

Waiting for people: the flow run pauses with a typed `RunInput` (`BatchSummary`) until the batch has its
quota of votes and its agreement threshold; the annotation app resumes it with the batch summary when the
last vote arrives; a person can resume it from the Prefect UI or with `lifecycle preferences resume`.
Embedded (no deployment) the process waits in place; run as a deployment by a worker, the flow run
suspends (the worker is freed) and is re-executed from the top when resumed: every stage before comes
from the cache, the batch is found by its id, and the MLflow parent run is re-attached.
"""

import logging
import time
from uuid import UUID

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import create_link_artifact
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run

from lifecycle.errors import LifecycleError
from lifecycle.preferences.summary import batch_summary, complete_if_ready, ready
from lifecycle.runtime import RunSettings
from lifecycle.store import StageOutput
from tasks.common import RunContext, stage_scope
from tasks.preferences import export_preferences, open_store, publish_batch


class BatchSummary(RunInput):
    """What the flow run is resumed with (the Prefect UI shows these fields as a form)."""

    batch_id: str
    votes: int = 0
    quota: int = 0
    agreement: float | None = None
    resumed_by: str = "a person in the Prefect UI"
    note: str = ""


SET_EXPORTED = "lifecycle.preference-set.exported"


@flow(name="preferences", flow_run_name="preferences")
def preferences_flow(settings: RunSettings = RunSettings(), ctx: RunContext | None = None,
                     sft: StageOutput | None = None, ingest: StageOutput | None = None) -> StageOutput:
    alone = ctx is None  # a deployment collecting preferences on its own: its set triggers the alignment
    with stage_scope("preferences", ctx, settings, {"sft": sft, "ingest": ingest}) as (ctx, inputs):
        batch_id = publish_batch(ctx, inputs["sft"], inputs["ingest"])
        resumed = None
        if batch_id and ctx.cfg.preferences.mode == "human":
            resumed = wait_for_votes(ctx, batch_id)
        output = export_preferences(ctx, inputs["sft"], inputs["ingest"], batch_id, resumed)
    if alone:
        announce_set(output, settings)
    return output


def announce_set(output: StageOutput, settings: RunSettings) -> None:
    """The event infra/prefect.yaml's align-and-promote deployment is triggered by: a new preference set."""
    from prefect.events import emit_event

    emit_event(event=SET_EXPORTED, resource={"prefect.resource.id": f"lifecycle.preference-set.{output.identity}",
                                             "lifecycle.profile": settings.profile},
               payload={"path": output.path, "run_id": output.run_id, "cached": output.cached,
                        "rows": output.metrics.get("rows", 0)})


def app_url(ctx: RunContext) -> str:
    cfg = ctx.cfg.annotate
    return (cfg.public_url or f"http://{cfg.host}:{cfg.port}").rstrip("/") + "/"


def wait_for_votes(ctx: RunContext, batch_id: str) -> dict | None:
    """Return once the batch has its votes (None), or with the input a person resumed the run with."""
    logger, store = get_run_logger(), open_store(ctx)
    human = ctx.cfg.preferences.human
    store.set_flow_run(batch_id, str(flow_run.id))  # before the check: a vote arriving now finds the run
    summary = batch_summary(store, batch_id)
    if summary["status"] != "open" or complete_if_ready(store, batch_id):
        logger.info("preferences: batch %s has its votes (%d)", batch_id, summary["votes"])
        return None
    url = app_url(ctx)
    create_link_artifact(link=url, link_text="annotate", key="annotate",
                         description=f"Vote on batch {batch_id}: {summary['items']} items x "
                                     f"{human.votes_per_item} votes (`lifecycle annotate` serves it)")
    print(f"\npreferences: batch {batch_id} waits for {summary['quota'] - summary['votes']} more votes.\n"
          f"  annotate: {url}   (start the app with `lifecycle annotate`; tokens: `lifecycle annotators add NAME`)\n"
          f"  the flow goes on when the quota and agreement are met, or: lifecycle preferences resume {batch_id}\n",
          flush=True)
    initial = BatchSummary.with_initial_data(batch_id=batch_id, votes=summary["votes"], quota=summary["quota"],
                                             agreement=summary["agreement"])
    try:
        if FlowRunContext.get().flow_run.deployment_id:  # a worker runs this flow run: free it while people vote
            answer = suspend_flow_run(wait_for_input=initial, timeout=human.timeout_s, key=f"votes-{batch_id}")
        else:
            answer = pause_flow_run(wait_for_input=initial, timeout=human.timeout_s,
                                    poll_interval=human.poll_interval_s, key=f"votes-{batch_id}")
    except FlowPauseTimeout:
        now = batch_summary(store, batch_id)
        raise LifecycleError(f"preferences: batch {batch_id} got {now['votes']} of {now['quota']} votes in "
                             f"{human.timeout_s} s (preferences.human.timeout_s); every vote is kept: run the same "
                             "command again to go on waiting") from None
    logger.info("preferences: resumed by %s (%s)", answer.resumed_by, answer.note or "no note")
    return answer.model_dump()


def resume_batch(summary: dict, resumed_by: str, note: str = "", wait_s: float = 60.0) -> str:
    """Resume the flow run waiting for this batch; it may be a moment from pausing, so wait for it."""
    flow_run_id = summary.get("flow_run_id")
    if not flow_run_id:
        raise LifecycleError(f"batch {summary['batch_id']}: no flow run is waiting for it")
    run_input = {"batch_id": summary["batch_id"], "votes": summary["votes"], "quota": summary["quota"],
                 "agreement": summary["agreement"], "resumed_by": resumed_by, "note": note}
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(UUID(flow_run_id)).state
            if state and state.is_paused():
                resume_flow_run(UUID(flow_run_id), run_input=run_input)
                return flow_run_id
            if state and state.is_final():
                raise LifecycleError(f"batch {summary['batch_id']}: flow run {flow_run_id} is {state.name}, "
                                     "not waiting")
            if time.monotonic() > deadline:
                seen = state.name if state else "unknown"
                raise LifecycleError(f"batch {summary['batch_id']}: flow run {flow_run_id} is {seen}, not paused "
                                     f"(waited {wait_s:.0f} s)")
            time.sleep(1.0)


def on_batch_complete(summary: dict) -> None:
    """The annotation app's hook: the last vote of a batch resumes the flow run waiting for it. With none
    waiting (it timed out, or has not paused yet), the next run finds the batch complete and goes on."""
    if not (ready(summary) and summary.get("flow_run_id")):
        return
    try:
        resume_batch(summary, "the annotation app (quota and agreement met)")
    except LifecycleError as err:
        logging.getLogger("lifecycle.preferences").info("batch complete; %s: the next run exports it", err)
