"""Nothing the project starts outlives its process (docs/RELIABILITY.md, "Processes"): the annotation app,
after it resumed a paused flow run through its own Prefect API, a `lifecycle run` while its Prefect API is
up, and `lifecycle ui` with both servers (MLflow's with a uvicorn child of its own), each stopped with
SIGTERM (a service manager), SIGINT (Ctrl-C) and SIGKILL, leave no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from lifecycle.preferences.db import default_url
from lifecycle.preferences.store import NewBatch, PreferenceStore
from tests.annotate_fixtures import comparison_items, free_port
from tests.conftest import CONF, TINY
from tests.process_fixtures import MARK, find, left_behind, mark, wait_for  # noqa: F401 - fixture

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SIGNALS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
PREFECT_API = ("lifecycle.prefect_api",)


def user_env(mark: str) -> dict[str, str]:
    """As a user starts it (no Prefect or MLflow server given), marked."""
    unset = ("PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "LIFECYCLE_HOME",
             "LIFECYCLE_EMBEDDED_API")
    return {k: v for k, v in os.environ.items() if k not in unset} | {MARK: mark}


def lifecycle(*args: str, mark: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lifecycle.cli", *args], cwd=ROOT, env=user_env(mark),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def api_of(mark: str) -> str:
    """The base URL of the marked process's Prefect API, once it answers."""
    [cmd] = wait_for(lambda: find(mark, *PREFECT_API), "Prefect API process").values()
    base = f"http://127.0.0.1:{cmd.split()[-1]}/api"  # python -m lifecycle.prefect_api PORT
    wait_for(lambda: answers(f"{base}/health"), f"answer from {base}")
    return base


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stopped_with(proc: subprocess.Popen, sig: signal.Signals) -> None:
    assert proc.poll() is None, f"it ended with status {proc.returncode} before it was stopped"
    proc.send_signal(sig)
    proc.wait(timeout=120)


@SIGNALS
def test_the_annotation_app_leaves_nothing_behind(tmp_path: Path, sig: signal.Signals, mark: str) -> None:
    state = tmp_path / "state"
    store = PreferenceStore.open(default_url(state))
    store.publish_batch(NewBatch("b1", "human", votes_per_item=1), comparison_items(1))
    token = store.add_annotator("ann")
    port = free_port()
    app = lifecycle("annotate", "--state-dir", str(state), "--port", str(port), mark=mark)
    api = api_of(mark)
    # a flow run waiting for the batch (as the preferences stage leaves it), in the app's Prefect database
    flow = httpx.post(f"{api}/flows/", json={"name": "waits-for-votes"}).json()["id"]
    flow_run = httpx.post(f"{api}/flow_runs/", json={"flow_id": flow, "state": {
        "type": "PAUSED", "name": "Paused", "state_details": {"pause_reschedule": False}}}).json()["id"]
    store.set_flow_run("b1", flow_run)

    wait_for(lambda: answers(f"http://127.0.0.1:{port}/healthz"), "annotation app")
    headers = {"Authorization": f"Bearer {token}"}
    item = httpx.get(f"http://127.0.0.1:{port}/api/next", headers=headers).json()["item"]
    vote = {"vote_id": str(uuid.uuid4()), "item_id": item["item_id"], "choice": "left"}
    assert httpx.post(f"http://127.0.0.1:{port}/api/votes", headers=headers, json=vote).status_code == 200
    wait_for(lambda: httpx.get(f"{api}/flow_runs/{flow_run}").json()["state"]["type"] != "PAUSED",
             "resume of the paused flow run by the app")
    assert len(find(mark, *PREFECT_API)) == 1  # it resumed through its own API: Prefect started none of its own
    stopped_with(app, sig)
    assert left_behind(mark) == {}


@SIGNALS
def test_a_run_leaves_nothing_behind(tmp_path: Path, sig: signal.Signals, mark: str) -> None:
    sets = [f"--set={value}" for value in TINY]
    run = lifecycle("run", "--until", "ingest", "--state-dir", str(tmp_path / "state"), "--conf", str(CONF), *sets,
                    mark=mark)
    api_of(mark)
    stopped_with(run, sig)
    assert left_behind(mark) == {}


@SIGNALS
def test_the_dashboards_leave_nothing_behind(tmp_path: Path, sig: signal.Signals, mark: str) -> None:
    ui = lifecycle("ui", "--state-dir", str(tmp_path / "state"), "--prefect-port", str(free_port()),
                   "--mlflow-port", str(free_port()), mark=mark)
    wait_for(lambda: find(mark, "prefect", "server", "start"), "Prefect server")
    wait_for(lambda: find(mark, "uvicorn", "mlflow.server"), "MLflow UI's uvicorn")  # a grandchild
    stopped_with(ui, sig)
    assert left_behind(mark) == {}


def test_a_dashboard_that_cannot_start_stops_the_other_and_names_its_log(tmp_path: Path, mark: str) -> None:
    """Both servers start at once; MLflow's port is taken, so it exits: `lifecycle ui` fails naming it and its
    log, and stops the Prefect server it had started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        state = tmp_path / "state"
        done = subprocess.run([sys.executable, "-m", "lifecycle.cli", "ui", "--state-dir", str(state),
                               "--prefect-port", str(free_port()), "--mlflow-port", str(taken.getsockname()[1])],
                              cwd=ROOT, env=user_env(mark), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "ui: the mlflow server did not start" in done.stderr and str(state / "logs" / "mlflow-server.log") in (
        done.stderr), done.stderr[-2000:]
    assert left_behind(mark) == {}
