"""Waiting for people's votes on a batch in the preference store: the preferences stage's comparison items and
the evaluate stage's human round (both in the annotation app).

The stage's flow run pauses with a typed `RunInput` (`BatchSummary`) until the batch has its quota of votes and
its agreement threshold; the annotation app resumes it with the batch summary when the last vote arrives
(lifecycle/preferences/resume.py); a person can resume it from the Prefect UI or with
`lifecycle preferences resume`. Embedded (no deployment) the process waits in place; run as a deployment by a
worker, the flow run suspends (the worker is freed) and is re-executed from the top when resumed: every stage
before comes from the cache, the batch is found by its id (it derives from what the batch holds), and the
MLflow parent run is re-attached. Prefect pauses flow runs, not tasks: `wait_for_votes` is called by the stage's
flow, outside any task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run

from lifecycle.errors import LifecycleError
from lifecycle.preferences.db import store_url
from lifecycle.preferences.store import PreferenceStore
from lifecycle.preferences.summary import batch_summary, complete_if_ready
from tasks.common import RunContext


class BatchSummary(RunInput):
    """What the flow run is resumed with (the Prefect UI shows these fields as a form)."""

    batch_id: str
    votes: int = 0
    quota: int = 0
    agreement: float | None = None
    resumed_by: str = "a person in the Prefect UI"
    note: str = ""


@dataclass(frozen=True)
class Waiting:
    """How long to wait, and what for (the config key its settings come from, for messages)."""

    timeout_s: int
    poll_interval_s: int
    key: str  # e.g. "preferences.human"


def open_store(ctx: RunContext) -> PreferenceStore:
    return PreferenceStore.open(store_url(ctx.cfg.annotate.store_url, Path(ctx.state_dir)))


def app_url(ctx: RunContext) -> str:
    cfg = ctx.cfg.annotate
    return (cfg.public_url or f"http://{cfg.host}:{cfg.port}").rstrip("/") + "/"


def wait_for_votes(ctx: RunContext, batch_id: str, waiting: Waiting) -> dict | None:
    """Return once the batch has its votes (None), or with the input a person resumed the run with."""
    logger, store = get_run_logger(), open_store(ctx)
    store.set_flow_run(batch_id, str(flow_run.id))  # before the check: a vote arriving now finds the run
    summary = batch_summary(store, batch_id)
    if summary["status"] != "open" or complete_if_ready(store, batch_id):
        logger.info("%s: batch %s has its votes (%d)", waiting.key, batch_id, summary["votes"])
        return None
    url = app_url(ctx)
    create_link_artifact(link=url, link_text="annotate", key="annotate",
                         description=f"Vote on batch {batch_id}: {summary['items']} items, {summary['quota']} votes "
                                     "in all (`lifecycle annotate` serves it)")
    print(f"\n{waiting.key}: batch {batch_id} waits for {summary['quota'] - summary['votes']} more votes.\n"
          f"  annotate: {url}   (start the app with `lifecycle annotate`; tokens: `lifecycle annotators add NAME`)\n"
          f"  the flow goes on when the quota and agreement are met, or: lifecycle preferences resume {batch_id}\n",
          flush=True)
    initial = BatchSummary.with_initial_data(batch_id=batch_id, votes=summary["votes"], quota=summary["quota"],
                                             agreement=summary["agreement"])
    try:
        if FlowRunContext.get().flow_run.deployment_id:  # a worker runs this flow run: free it while people vote
            answer = suspend_flow_run(wait_for_input=initial, timeout=waiting.timeout_s, key=f"votes-{batch_id}")
        else:
            answer = pause_flow_run(wait_for_input=initial, timeout=waiting.timeout_s,
                                    poll_interval=waiting.poll_interval_s, key=f"votes-{batch_id}")
    except FlowPauseTimeout:
        now = batch_summary(store, batch_id)
        raise LifecycleError(f"{waiting.key}: batch {batch_id} got {now['votes']} of {now['quota']} votes in "
                             f"{waiting.timeout_s} s ({waiting.key}.timeout_s); every vote is kept: run the same "
                             "command again to go on waiting") from None
    logger.info("%s: resumed by %s (%s)", waiting.key, answer.resumed_by, answer.note or "no note")
    return answer.model_dump()
