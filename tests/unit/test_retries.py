"""Which failures the stage tasks retry (lifecycle/faults.py, tasks/retries.py STAGE_RETRIES): real errors from a
locked SQLite database, a closed port and a server answering 503 are transient; user errors, a full or read-only
disk and anything else are not. A real Prefect task with the stage policy retries the first kind only."""

from __future__ import annotations

import errno
import http.server
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import prefect.runtime
import pytest
import requests
import mlflow
import sqlalchemy
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.exceptions import Pause

from lifecycle.errors import InputError, LifecycleError, StorageError, ValidationFailed
from lifecycle.faults import storage_error, storage_errors, transient_reason
from lifecycle.tracking import fail_stale_runs
from tasks.retries import STAGE_RETRIES


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def locked_db(tmp_path: Path) -> Iterator[Path]:
    """A SQLite database another connection holds with BEGIN EXCLUSIVE."""
    db = tmp_path / "locked.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    yield db
    holder.execute("ROLLBACK")
    holder.close()


@pytest.fixture
def status_server() -> Iterator[str]:
    """An HTTP server on loopback answering every request with the status in its path (/503/...)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(int(self.path.split("/")[1]))
            self.end_headers()
            self.wfile.write(b"<html>busy</html>")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def caught(call) -> BaseException:
    try:
        call()
    except BaseException as err:  # noqa: BLE001 - the point is to look at whatever was raised
        return err
    raise AssertionError("expected an exception")


def test_a_locked_sqlite_database_is_transient_directly_through_sqlalchemy_and_as_mlflow_wraps_it(locked_db: Path):
    direct = caught(lambda: sqlite3.connect(locked_db, timeout=0.1).execute("SELECT * FROM t").fetchall())
    assert transient_reason(direct) == "database is locked"
    engine = sqlalchemy.create_engine(f"sqlite:///{locked_db}", connect_args={"timeout": 0.1})

    def read() -> None:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT * FROM t")).fetchall()

    wrapped = caught(read)
    assert isinstance(wrapped, sqlalchemy.exc.OperationalError) and transient_reason(wrapped) == "database is locked"

    def as_mlflow_does() -> None:  # mlflow/store/db/utils.py make_managed_session
        try:
            read()
        except sqlalchemy.exc.OperationalError as err:
            raise MlflowException(message=err, error_code="TEMPORARILY_UNAVAILABLE") from err

    assert transient_reason(caught(as_mlflow_does)) == "database is locked"


def test_a_tracking_server_that_is_down_or_answers_503_is_transient_and_a_404_is_not(
        status_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = f"http://127.0.0.1:{closed_port()}"
    assert transient_reason(caught(lambda: requests.get(down, timeout=2))) == "connection refused"
    assert transient_reason(caught(lambda: httpx.get(down, timeout=2))) == "connection refused"
    refused = caught(lambda: MlflowClient(tracking_uri=down).get_experiment("0"))
    assert isinstance(refused, MlflowException) and transient_reason(refused) == "connection refused"
    busy = caught(lambda: MlflowClient(tracking_uri=f"{status_server}/503").get_experiment("0"))
    assert transient_reason(busy) == "HTTP 503", busy
    missing = caught(lambda: MlflowClient(tracking_uri=f"{status_server}/404").get_experiment("0"))
    assert isinstance(missing, MlflowException) and transient_reason(missing) is None, missing


def test_user_errors_full_disks_and_bugs_are_not_transient(locked_db: Path) -> None:
    locked = caught(lambda: sqlite3.connect(locked_db, timeout=0.1).execute("SELECT * FROM t").fetchall())
    for error in (InputError("corpus/a.txt: line 3: invalid UTF-8"), ValidationFailed("min_documents: observed 1"),
                  LifecycleError("bad"), ValueError("connection refused"), KeyError("x"), Pause("waiting for votes"),
                  sqlite3.OperationalError("database or disk is full"), OSError(errno.ENOSPC, "No space left", "/s")):
        assert transient_reason(error) is None, error

    def user_error_from_lock() -> None:
        try:
            raise locked
        except sqlite3.OperationalError as err:
            raise InputError("store: cannot read votes") from err

    assert transient_reason(caught(user_error_from_lock)) is None  # a user error is final even when it wraps one


def test_disk_full_and_permission_errors_become_user_errors_naming_the_path(tmp_path: Path) -> None:
    full = storage_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a.arrow")), "ingest",
                         tmp_path)
    assert str(full) == (f"ingest: no space left on device while writing '{tmp_path / 'a.arrow'}' (free some space "
                         "or point --state-dir elsewhere)")
    denied = storage_error(PermissionError(errno.EACCES, "Permission denied", "/srv/state/artifacts"), None, None)
    assert str(denied).startswith("permission denied while writing '/srv/state/artifacts'")
    sqlite_full = storage_error(sqlite3.OperationalError("database or disk is full"), "tokenize", tmp_path)
    assert str(sqlite_full).startswith(f"tokenize: no space left on device while writing under '{tmp_path}'")
    assert storage_error(OSError(errno.ENOENT, "No such file", "/x"), "ingest", tmp_path) is None
    with pytest.raises(StorageError, match=r"read-only file system while writing '/ro/x'") as raised:
        with storage_errors("pretrain", tmp_path):
            raise OSError(errno.EROFS, "Read-only file system", "/ro/x")
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # printed alone, no traceback
    with pytest.raises(OSError, match="No such file"), storage_errors("pretrain", tmp_path):
        raise OSError(errno.ENOENT, "No such file", "/x")  # any other error goes through untouched


def _task_run_facts(task_run_id) -> tuple[int, list[str]]:
    with get_client(sync_client=True) as client:
        return (client.read_task_run(task_run_id).run_count,
                [s.name for s in client.read_task_run_states(task_run_id)])


def test_a_stage_task_retries_a_locked_database_and_not_a_user_error(caplog: pytest.LogCaptureFixture) -> None:
    calls = {"locked": 0, "user": 0}
    attempts: list[int] = []

    @task(name="flaky-stage", **STAGE_RETRIES)
    def flaky() -> str:
        calls["locked"] += 1
        attempts.append(prefect.runtime.task_run.run_count)  # what run_stage reads to close a failed attempt's run
        if calls["locked"] == 1:
            raise sqlite3.OperationalError("database is locked")
        return "done"

    @task(name="bad-input-stage", **STAGE_RETRIES)
    def bad_input() -> str:
        calls["user"] += 1
        raise InputError("corpus/a.txt: not UTF-8")

    @flow
    def stages() -> tuple:
        return flaky(return_state=True), bad_input(return_state=True)

    retried, refused = stages()
    assert retried.is_completed() and retried.result() == "done" and calls["locked"] == 2 and attempts == [1, 2]
    run_count, states = _task_run_facts(retried.state_details.task_run_id)
    assert run_count == 2 and "AwaitingRetry" in states
    logs = [r.getMessage() for r in caplog.records]
    assert "flaky-stage: transient failure (database is locked), retry 1 of 3 in about 2 s" in logs, logs
    assert refused.is_failed() and calls["user"] == 1
    run_count, states = _task_run_facts(refused.state_details.task_run_id)
    assert run_count == 1 and "AwaitingRetry" not in states
    assert sum("transient failure" in m for m in logs) == 1


def test_a_retry_closes_the_stage_runs_a_failed_attempt_left_running(tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("retries", artifact_location=(tmp_path / "artifacts").as_uri())
    left_open = client.create_run(experiment, tags={"prefect.task_run_id": "task-1"}).info.run_id
    other_task = client.create_run(experiment, tags={"prefect.task_run_id": "task-2"}).info.run_id
    ended = client.create_run(experiment, tags={"prefect.task_run_id": "task-1"}).info.run_id
    client.set_terminated(ended, "FINISHED")
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)  # fail_stale_runs works on the pipeline's tracking store
    try:
        assert fail_stale_runs(experiment, "task-1") == [left_open]
    finally:
        mlflow.set_tracking_uri(before)
    status = {run_id: client.get_run(run_id).info.status for run_id in (left_open, other_task, ended)}
    assert status == {left_open: "FAILED", other_task: "RUNNING", ended: "FINISHED"}
