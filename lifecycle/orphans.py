"""Runs left RUNNING by a pipeline process that died (kill -9, out of memory, a lost machine): the next
pipeline run on the same host finds them and closes them, so the dashboards show no zombies. The MLflow
parent run and its RUNNING child runs end KILLED; the Prefect flow run, the stage's subflow run and task
run end Crashed. A run is an orphan when its process (`lifecycle.process`: host, pid and the process's
start time, so a reused pid does not count) is gone and its flow run is not paused (a suspended flow run
waits for a person without a process, and re-attaches to its parent run when it resumes).

    mark = process_token()                       # tag of a parent run
    closed = close_orphans(experiment_id, flow_run_id)  # the parent runs it closed
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from lifecycle.names import CLOSED_BY, PROCESS, ROLE

log = logging.getLogger("lifecycle.orphans")


def process_token(pid: int | None = None) -> str:
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux); "" where /proc is missing or it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def is_dead(token: str) -> bool:
    """Whether the process a token names is gone; False for another host's (it cannot be checked here)."""
    host, _, rest = token.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not started or _start_time(int(pid)) != started


def close_orphans(experiment_id: str, flow_run_id: str) -> list[Run]:
    """Close the orphaned parent runs of the experiment (and their RUNNING children and Prefect runs);
    returns the parent runs closed."""
    client = MlflowClient()
    query = f"attributes.status = 'RUNNING' and tags.`{ROLE}` = 'pipeline' and tags.`{PROCESS}` != ''"
    closed = []
    for run in client.search_runs([experiment_id], query, max_results=100):
        tags = run.data.tags
        if tags.get("prefect.flow_run_id") == flow_run_id or not is_dead(tags[PROCESS]):
            continue
        if _paused(tags.get("prefect.flow_run_id")):
            continue
        children = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and "
                                                       f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
        for orphan in [*children, run]:
            _crash_prefect_runs(orphan)
            client.set_tag(orphan.info.run_id, CLOSED_BY, flow_run_id)
            client.set_terminated(orphan.info.run_id, "KILLED")
        log.warning("closed run %s (flow run %s) and %d running stage run(s): its process %s is gone",
                    run.info.run_id, tags.get("prefect.flow_run_id"), len(children), tags[PROCESS])
        closed.append(run)
    return closed


def _paused(flow_run_id: str | None) -> bool:
    if not flow_run_id:
        return False
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as prefect:
        try:
            return prefect.read_flow_run(flow_run_id).state.is_paused()
        except ObjectNotFound:  # a flow run this API does not know: nothing waits for it here
            return False


def _crash_prefect_runs(run: Run) -> None:
    """The Prefect runs a stage or parent run names, Crashed unless already final."""
    from prefect import get_client
    from prefect.states import Crashed

    tags, message = run.data.tags, "its process died (closed by a later run on this host)"
    with get_client(sync_client=True) as prefect:
        for key in ("prefect.task_run_id",):
            if tags.get(key) and not prefect.read_task_run(tags[key]).state.is_final():
                prefect.set_task_run_state(tags[key], Crashed(message=message), force=True)
        for key in ("prefect.stage_flow_run_id", "prefect.flow_run_id"):
            if tags.get(key) and not prefect.read_flow_run(tags[key]).state.is_final():
                prefect.set_flow_run_state(tags[key], Crashed(message=message), force=True)
