"""Resuming the flow run that waits for a batch's votes (the preferences stage, mode `human`): the
annotation app's hook when the last vote arrives, and `lifecycle preferences resume`. One of the few places
the library talks to Prefect (its client only, imported when called; docs/ARCHITECTURE.md says where and
why): a flow run paused for input can only be resumed through the Prefect API."""

from __future__ import annotations

import logging
import time
from uuid import UUID

from lifecycle.errors import LifecycleError
from lifecycle.preferences.summary import ready


def resume_batch(summary: dict, resumed_by: str, note: str = "", wait_s: float = 60.0) -> str:
    """Resume the flow run waiting for this batch; it may be a moment from pausing, so wait for it."""
    flow_run_id = summary.get("flow_run_id")
    if not flow_run_id:
        raise LifecycleError(f"batch {summary['batch_id']}: no flow run is waiting for it")
    run_input = {"batch_id": summary["batch_id"], "votes": summary["votes"], "quota": summary["quota"],
                 "agreement": summary["agreement"], "resumed_by": resumed_by, "note": note}
    from prefect import get_client  # the library's Prefect client use: docs/ARCHITECTURE.md
    from prefect.flow_runs import resume_flow_run

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
