"""The pipeline's MLflow parent run is stored with the Prefect flow run id, not held by one process: a
flow run that waits for people and resumes logs its remaining stages under the same parent run, whether
it paused in place or was suspended (its process ended) and re-executed by a runner in a new process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from uuid import UUID

import pytest
from mlflow.tracking import MlflowClient
from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState
from prefect.client.schemas.filters import FlowRunFilterStateName
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run

from lifecycle.tracking import tracking_uri
from tests.integration.suspend_probe import waits_for_people

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def pipeline_runs(state: Path) -> tuple[list, list]:
    """(parent runs, stage runs) of the experiment."""
    client = MlflowClient(tracking_uri(state))
    runs = client.search_runs([client.get_experiment_by_name("llm-lifecycle").experiment_id])
    return ([r for r in runs if r.data.tags.get("lifecycle.role") == "pipeline"],
            [r for r in runs if r.data.tags.get("lifecycle.stage")])


def wait_for_state(flow_run_id: UUID, names: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(flow_run_id).state
            if state and state.name in names:
                return state.name
            time.sleep(0.5)
    raise AssertionError(f"flow run {flow_run_id} never reached {names}")


def test_a_paused_flow_run_resumes_under_the_same_parent_run(tmp_path: Path, conf_dir: Path,
                                                            tiny_overrides: list[str]) -> None:
    state = tmp_path / "state"

    def resume_when_paused() -> None:
        paused = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"])))
        mine = FlowFilter(name=FlowFilterName(any_=["waits-for-people"]))
        with get_client(sync_client=True) as client:
            for _ in range(600):
                found = client.read_flow_runs(flow_run_filter=paused, flow_filter=mine)
                if found:
                    resume_flow_run(found[0].id)
                    return
                time.sleep(0.2)

    with get_client(sync_client=True) as client:  # Prefect's ephemeral server started here, once: two threads
        client.api_healthcheck()                   # starting it at the same time race (server_process None)
    person = threading.Thread(target=resume_when_paused, daemon=True)
    person.start()
    parent_id = waits_for_people(str(state), str(conf_dir), tiny_overrides, suspend=False)
    person.join(timeout=10)
    parents, stages = pipeline_runs(state)
    assert [p.info.run_id for p in parents] == [parent_id] and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["lifecycle.stage"] for r in stages) == ["ingest", "validate"]
    assert {r.data.tags["mlflow.parentRunId"] for r in stages} == {parent_id}


@pytest.mark.slow
def test_a_suspended_flow_run_resumes_in_a_new_process_under_the_same_parent_run(
        tmp_path: Path, conf_dir: Path, tiny_overrides: list[str]) -> None:
    """A runner process serving the flow, which suspends (its flow-run process ends) and is re-executed in a new
    one when resumed, each step seen by polling the Prefect API: most of a minute."""
    state = tmp_path / "state"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},  # set by earlier tests
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PYTHONPATH": str(ROOT)}
    runner = subprocess.Popen([sys.executable, str(ROOT / "tests" / "integration" / "suspend_probe.py")], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with get_client(sync_client=True) as client:
            for _ in range(240):  # the runner registers its deployment once started
                try:
                    client.read_deployment_by_name("waits-for-people/probe")
                    break
                except Exception:  # not there yet
                    time.sleep(0.5)
        flow_run = run_deployment("waits-for-people/probe", timeout=0, parameters={
            "state_dir": str(state), "conf_dir": str(conf_dir), "overrides": tiny_overrides, "suspend": True})
        assert wait_for_state(flow_run.id, {"Suspended"}, timeout=240) == "Suspended"  # its process has ended
        parents, stages = pipeline_runs(state)
        assert len(parents) == 1 and parents[0].info.status == "RUNNING"  # left open for the resumed run
        assert [r.data.tags["lifecycle.stage"] for r in stages] == ["ingest"]

        resume_flow_run(flow_run.id)  # a person is done: the runner re-executes the flow run from the top
        assert wait_for_state(flow_run.id, {"Completed", "Failed", "Crashed"}, timeout=240) == "Completed"
    finally:
        runner.terminate()
        runner.wait(timeout=30)
    after, stages = pipeline_runs(state)
    assert [p.info.run_id for p in after] == [parents[0].info.run_id]  # the same parent run, re-attached
    assert after[0].info.status == "FINISHED" and after[0].data.tags["lifecycle.resumed"] == "1"
    assert after[0].data.tags["prefect.flow_run_id"] == str(flow_run.id)
    assert {r.data.tags["mlflow.parentRunId"] for r in stages} == {parents[0].info.run_id}
    by_stage = sorted((r.data.tags["lifecycle.stage"], r.data.tags["lifecycle.cache_hit"]) for r in stages)
    assert by_stage == [("ingest", "false"), ("ingest", "true"), ("validate", "false")]  # ingest from the cache
