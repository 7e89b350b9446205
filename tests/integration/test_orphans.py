"""kill -9 of a whole `lifecycle run` during pretraining, then the same command: the new run resumes from
the checkpoint and closes what the dead one left RUNNING (MLflow runs KILLED, Prefect flow run, stage
subflow and task run Crashed), and names the run it resumed (docs/RELIABILITY.md)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lifecycle.tracking import tracking_uri
from tests.integration.conftest import TINY_PRETRAIN

ROOT = Path(__file__).resolve().parents[2]
CLEAN_ENV = ("PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "LIFECYCLE_HOME")
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def command(state: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "lifecycle.cli", "run", "--state-dir", str(state), "--until", "pretrain",
            *(f"--set={o}" for o in overrides)]


def prefect_states(state: Path) -> dict[str, list[tuple[str, str]]]:
    """(name, state type) of every flow run and task run in the run's Prefect database."""
    with sqlite3.connect(state / "prefect" / "prefect.db") as db:
        return {table: db.execute(f"SELECT name, state_type FROM {table} ORDER BY start_time").fetchall()
                for table in ("flow_run", "task_run")}


def test_a_killed_run_is_closed_by_the_next_one_which_resumes(tmp_path: Path, tiny_overrides: list[str]) -> None:
    """Two `lifecycle run` processes on a fresh state dir (each starts its own Prefect API), the second
    pretraining to the end from the first one's checkpoint: most of a minute."""
    state = tmp_path / "state"
    overrides = tiny_overrides + TINY_PRETRAIN + ["pretrain.max_steps=400", "pretrain.checkpoint_every=10",
                                                  "pretrain.eval_every=0", "pretrain.num_threads=1"]
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    proc = subprocess.Popen(command(state, overrides), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((state / "checkpoints" / "pretrain").glob("*/step-*/meta.json")):
        assert proc.poll() is None, "the run ended before pretraining wrote a checkpoint"
        assert time.monotonic() < deadline, "no pretraining checkpoint within 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its Prefect API server, as a lost machine would
    proc.wait()

    client = MlflowClient(tracking_uri(state))
    experiment = client.get_experiment_by_name("llm-lifecycle").experiment_id
    [killed] = client.search_runs([experiment], "tags.`lifecycle.role` = 'pipeline'")
    assert killed.info.status == "RUNNING"  # what the dashboards showed forever before
    assert ("pipeline-default", "RUNNING") in prefect_states(state)["flow_run"]

    done = subprocess.run(command(state, overrides), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "closed 1 run(s) whose process died" in done.stdout + done.stderr

    runs = {r.info.run_id: r for r in client.search_runs([experiment], "")}
    old = runs[killed.info.run_id]
    assert old.info.status == "KILLED" and old.data.tags["lifecycle.closed_by_run"]
    old_children = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == killed.info.run_id]
    assert {r.data.tags["lifecycle.stage"]: r.info.status for r in old_children}["pretrain"] == "KILLED"
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    [new] = [r for r in runs.values() if r.data.tags.get("lifecycle.role") == "pipeline" and r is not old]
    assert new.info.status == "FINISHED" and new.data.tags["lifecycle.resumes_run"] == killed.info.run_id
    [pretrain] = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == new.info.run_id
                  and r.data.tags.get("lifecycle.stage") == "pretrain"]
    assert pretrain.data.metrics["pretrain/resumed_from_step"] >= 10  # from the dead run's checkpoint

    found = prefect_states(state)
    assert [s for n, s in found["flow_run"] if n == "pipeline-default"] == ["CRASHED", "COMPLETED"]
    assert "RUNNING" not in {s for _, s in found["flow_run"] + found["task_run"]}
    assert ("CRASHED" in {s for n, s in found["task_run"] if n.startswith("pretrain")})
