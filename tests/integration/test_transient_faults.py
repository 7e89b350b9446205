"""Transient faults during a stage, for real: a tracking server (`mlflow server` on loopback) stopped just before
the ingest task starts and restarted seconds later, and the SQLite tracking database held by another
connection's BEGIN EXCLUSIVE. The task is retried (tasks/retries.py STAGE_RETRIES) and completes, and MLflow has
its finished run; a user error is not retried (docs/RELIABILITY.md). The pipeline runs in a subprocess
(tests/integration/transient_runner.py) that waits for the fault before it calls the task."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY
from tests.integration.test_bad_input import CLEAN_ENV, ROOT
from tests.process_fixtures import wait_until_answers

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXPERIMENT = "llm-lifecycle"


class Runner:
    """tests/integration/transient_runner.py in a subprocess: the ingest stage of a pipeline flow run."""

    def __init__(self, tmp_path: Path, env: dict[str, str], overrides: list[str]) -> None:
        self.state, self.sync, self.log = tmp_path / "state", tmp_path / "sync", tmp_path / "runner.log"
        self.sync.mkdir()
        base = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
        args = [a for o in overrides for a in ("--set", o)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.integration.transient_runner", str(self.state),
                                          str(self.sync), *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env=base | {"PREFECT_HOME": str(tmp_path / "prefect")} | env)

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while not (self.sync / "ready").exists():
            assert self.proc.poll() is None, self.output()[-3000:]
            assert time.monotonic() < deadline, self.output()[-3000:]
            time.sleep(0.1)

    def go(self) -> None:
        (self.sync / "go").touch()

    def result(self, timeout_s: float = 300) -> dict:
        self.proc.wait(timeout=timeout_s)
        lines = [line for line in self.output().splitlines() if line.startswith('{"state"')]
        assert self.proc.returncode == 0 and lines, self.output()[-3000:]
        return json.loads(lines[-1])

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class TrackingServer:
    """`mlflow server` on loopback over a SQLite file, in its own process group (stopped as a whole)."""

    def __init__(self, tmp_path: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url, self.tmp, self.proc = f"http://127.0.0.1:{self.port}", tmp_path, None

    def start(self, timeout_s: float = 120) -> None:
        argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.tmp / 'ml.db'}",
                "--artifacts-destination", str(self.tmp / "ml-artifacts"), "--host", "127.0.0.1", "--port",
                str(self.port), "--workers", "1"]
        # without MLflow's job runner (GenAI jobs, ~10 processes and 30 s of CPU per start), as `lifecycle ui`
        env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with open(self.tmp / "mlflow-server.log", "ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until_answers(f"{self.url}/health", self.proc, self.tmp / "mlflow-server.log", timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def tracking_server(tmp_path: Path) -> Iterator[TrackingServer]:
    server = TrackingServer(tmp_path)
    server.start()
    yield server
    server.stop()


def ingest_runs(tracking_uri: str) -> list:
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], "tags.`lifecycle.stage` = 'ingest'")


def assert_retried_and_completed(result: dict, output: str, reason: str) -> None:
    assert result["state"] == "Completed", (result, output[-3000:])
    assert result["run_count"] >= 2 and "AwaitingRetry" in result["states"], result
    assert f"ingest: transient failure ({reason}), retry 1 of 3 in about 2 s" in output, output[-3000:]


def test_a_tracking_server_down_for_seconds_is_survived_by_a_retry(tmp_path: Path,
                                                                    tracking_server: TrackingServer) -> None:
    """The server stays down 10 s, longer than MLflow's own HTTP retries, so the task itself must retry."""
    runner = Runner(tmp_path, {"MLFLOW_TRACKING_URI": tracking_server.url}, TINY)
    try:
        runner.wait_ready()
        tracking_server.stop()  # the parent run is open; the ingest task has not started
        runner.go()
        time.sleep(10)  # longer than MLflow's own HTTP retries (0 + 2 + 4 s): the task fails and waits its retry
        tracking_server.start()
        result = runner.result()
    finally:
        runner.stop()
    assert_retried_and_completed(result, runner.output(), "connection refused")
    runs = ingest_runs(tracking_server.url)
    assert [r.info.status for r in runs] == ["FINISHED"] and "ingest/seconds" in runs[0].data.metrics
    assert [p.name for p in (runner.state / "artifacts" / "ingest").iterdir()] == [runs[0].data.tags["lifecycle.key"]]


def test_a_locked_sqlite_tracking_database_is_survived_by_a_retry(tmp_path: Path) -> None:
    """The lock is held 25 s: MLflow waits 20 s on it before the first attempt fails, then the retry gets it."""
    runner = Runner(tmp_path, {}, TINY)
    try:
        runner.wait_ready()
        holder = sqlite3.connect(runner.state / "mlflow" / "mlflow.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # MLflow waits 20 s on a lock (busy_timeout), then fails
        runner.go()
        time.sleep(25)  # the first attempt fails at ~20 s; the retry (2 s later) waits for the lock and gets it
        holder.execute("ROLLBACK")
        holder.close()
        result = runner.result()
    finally:
        runner.stop()
    assert_retried_and_completed(result, runner.output(), "database is locked")
    runs = ingest_runs(f"sqlite:///{runner.state / 'mlflow' / 'mlflow.db'}")
    assert "FINISHED" in [r.info.status for r in runs]


def test_a_user_error_in_a_stage_is_not_retried(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-corpus"
    runner = Runner(tmp_path, {}, [f"ingest.sources=[{{name: gone, kind: files, paths: ['{missing}']}}]"])
    try:
        runner.go()
        result = runner.result()
    finally:
        runner.stop()
    assert result["state"] == "Failed" and "InputError" in result["message"] and str(missing) in result["message"]
    assert result["run_count"] == 1 and "AwaitingRetry" not in result["states"], result
    assert "transient failure" not in runner.output()


def test_a_tracking_server_down_when_the_run_starts_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV} | {"MLFLOW_TRACKING_URI": url}
    done = subprocess.run([sys.executable, "-m", "lifecycle.cli", "run", "--state-dir", str(tmp_path / "state"),
                           "--until", "ingest", *[a for o in TINY for a in ("--set", o)]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    message = (f"MLflow tracking at {url} is unavailable (connection refused); start it (or check "
               "MLFLOW_TRACKING_URI) and run again")
    assert done.returncode == 2 and f"error: {message}" in output, output[-3000:]
    assert output.count(message) == 1 and "Traceback" not in output
    assert "Task run 'ingest" not in output  # stopped before any stage
