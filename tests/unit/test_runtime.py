"""Process set-up: third-party warnings filtered by name only, and the run's own Prefect API (started
before prefect is imported, used by Prefect instead of its own temporary server, gone with the process)."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import types
import urllib.request
import warnings
from contextlib import closing
from pathlib import Path

import pytest

from lifecycle.db_template import FORMAT
from lifecycle.runtime import EMBEDDED_API, filter_known_warnings, is_temporary_api, start_embedded_api

ROOT = Path(__file__).resolve().parents[2]


def test_known_warnings_are_dropped_by_category_and_message_and_others_still_show() -> None:
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        filter_known_warnings()
        warnings.warn("lancedb fork support is experimental: the internal async runtime has been reset", RuntimeWarning)
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("lancedb fork support is experimental", UserWarning)  # the message, but another category
        warnings.warn("something nobody has looked at yet", RuntimeWarning)
    assert [(w.category, str(w.message)) for w in shown] == [
        (UserWarning, "lancedb fork support is experimental"),
        (RuntimeWarning, "something nobody has looked at yet")]


def test_known_log_records_are_dropped_by_logger_and_message_and_others_still_show() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.name}: {record.getMessage()}")

    handler = Keep()
    mlflow_transformers, other = logging.getLogger("mlflow.transformers"), logging.getLogger("mlflow.models")
    filter_known_warnings()
    for logger in (mlflow_transformers, other):
        logger.addHandler(handler)
    try:
        mlflow_transformers.warning("The model card could not be retrieved from the hub due to %s", "a local path")
        mlflow_transformers.warning("Unable to find license information for this model. Please verify ...")
        mlflow_transformers.warning("Could not save the model: disk full")
        other.warning("Unable to find license information for this model.")  # same message, another logger
    finally:
        for logger in (mlflow_transformers, other):
            logger.removeHandler(handler)
    assert records == ["mlflow.transformers: Could not save the model: disk full",
                       "mlflow.models: Unable to find license information for this model."]


EMBEDDED = """
import json, os
from lifecycle.runtime import start_embedded_api
api = start_embedded_api()
from prefect import flow
from prefect.settings import get_current_settings
api.wait()

@flow
def probe() -> int:
    return 1

print(json.dumps({"url": api.url, "prefect": get_current_settings().api.url, "pid": api.process.pid,
                  "result": probe(), "server_stderr": os.readlink(f"/proc/{api.process.pid}/fd/2")}))
"""


def test_the_runs_own_prefect_api_serves_its_flows_and_goes_with_the_process(tmp_path: Path) -> None:
    """Two runs on fresh state dirs: the first migrates its Prefect database and keeps an empty copy in the
    cache, the second starts from that copy (lifecycle/prefect_api.py); both serve their flows."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", EMBEDDED_API)}
    env |= {"PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    template = tmp_path / "cache" / "llm-lifecycle" / f"prefect-{package_version('prefect')}.v{FORMAT}.db"
    for run, seeded in (("first", "migrated; kept empty as"), ("second", "a copy of")):
        home = tmp_path / run / "prefect"
        done = subprocess.run([sys.executable, "-c", EMBEDDED], cwd=ROOT, capture_output=True, text=True,
                              timeout=180, env=env | {"PREFECT_HOME": str(home)})
        assert done.returncode == 0, done.stderr[-2000:]
        found = json.loads(done.stdout.splitlines()[-1])
        assert found["prefect"] == found["url"] and found["result"] == 1  # Prefect ran the flow on it ...
        assert "Starting temporary server" not in done.stderr  # ... and started no server of its own
        assert (home / "prefect.db").is_file()  # the database under PREFECT_HOME
        log = home / "api.log"  # the server's own output (tracebacks as it stops): a file, not the console
        text = log.read_text()
        assert found["server_stderr"] == str(log) and f"port {found['url'].split(':')[2].split('/')[0]}" in text
        assert f"prefect database {home / 'prefect.db'}: {seeded} {template}" in text
        assert "ERROR" not in text and "Traceback" not in text
        with pytest.raises(ProcessLookupError):  # stopped (and reaped) when the process exited
            os.kill(found["pid"], 0)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{found['url']}/health", timeout=2)
    with closing(sqlite3.connect(template)) as db:  # empty, migrated, in Prefect's journal mode
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT count(*) FROM flow_run").fetchone() == (0,)
        assert db.execute("SELECT version_num FROM alembic_version").fetchall()
        types = db.execute("SELECT count(*) FROM block_type").fetchone()[0]
    assert types > 5  # Prefect's block types, registered once in the template, not by each new server
    with closing(sqlite3.connect(tmp_path / "second" / "prefect" / "prefect.db")) as db:
        assert db.execute("SELECT count(*) FROM block_type").fetchone()[0] == types


def test_no_api_is_started_when_a_server_is_given_or_prefect_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    assert start_embedded_api() is None
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setitem(sys.modules, "prefect", sys.modules.get("prefect") or types.ModuleType("prefect"))
    assert start_embedded_api() is None  # too late: Prefect read its settings already; it starts its own


def test_temporary_apis_are_prefects_own_and_the_runs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EMBEDDED_API, "http://127.0.0.1:8123/api")
    assert is_temporary_api(None) and is_temporary_api("http://127.0.0.1:8123/api")
    assert not is_temporary_api("http://prefect.example:4200/api")


def test_a_new_state_dirs_tracking_database_starts_from_a_migrated_copy(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The first fresh state dir's MLflow database is migrated by MLflow and an empty copy kept; the next one
    starts from that copy, and MLflow opens it at its head revision with a Default experiment of its own."""
    from mlflow.tracking import MlflowClient

    from lifecycle.tracking import setup_mlflow, tracking_uri_in

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = tmp_path / "cache" / "llm-lifecycle" / f"mlflow-{package_version('mlflow')}.v{FORMAT}.db"
    for run in ("first", "second"):
        state = tmp_path / run
        assert setup_mlflow(state, "llm-lifecycle") == "1"
        experiments = {e.name: e.artifact_location for e in MlflowClient(tracking_uri_in(state)).search_experiments()}
        assert experiments["llm-lifecycle"] == (state / "mlflow" / "artifacts").resolve().as_uri()
        assert "Default" in experiments
        assert template.is_file()
    with closing(sqlite3.connect(template)) as db:  # empty: no experiment, not even MLflow's Default one
        assert db.execute("SELECT count(*) FROM experiments").fetchone() == (0,)
        assert db.execute("SELECT version_num FROM alembic_version").fetchall()
    template.write_bytes(b"")  # a damaged template is never reached for a state dir that has its database
    assert setup_mlflow(tmp_path / "first", "llm-lifecycle") == "1"


def package_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def test_a_database_is_put_in_place_once_even_without_hard_links(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from lifecycle.db_template import put_in_place

    db = tmp_path / "x.db"
    for content, placed in ((b"first", True), (b"second", False)):  # a database already there is never replaced
        partial = tmp_path / ".x.db.tmp"
        partial.write_bytes(content)
        assert put_in_place(partial, db) is placed and not partial.exists()
    assert db.read_bytes() == b"first"

    def no_links(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("os.link", no_links)  # e.g. a FAT or some FUSE file system
    other = tmp_path / "y.db"
    for content, placed in ((b"first", True), (b"second", False)):
        partial = tmp_path / ".y.db.tmp"
        partial.write_bytes(content)
        assert put_in_place(partial, other) is placed and not partial.exists()
    assert other.read_bytes() == b"first"
