"""`lifecycle ui` in headless Chromium: one command starts the Prefect server and the MLflow UI over the
state a pipeline run wrote; both pages show that run (the Prefect flow run, the MLflow parent run), and
stopping the command stops both servers. MLflow's job runner (its GenAI jobs, about ten processes) stays
off."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.browser.chrome import NEEDS_CHROMIUM, wait_for
from tests.conftest import CONF, ROOT, TINY
from tests.process_fixtures import MARK, find, mark  # noqa: F401 - fixture

pytestmark = [*NEEDS_CHROMIUM, pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_both_dashboards_show_the_latest_pipeline_run(tmp_path: Path, browser: webdriver.Chrome, mark: str) -> None:
    """A `lifecycle run` process, then `lifecycle ui` starting a Prefect server and the MLflow UI, and
    Chromium rendering both single-page apps: about a minute."""
    state = tmp_path / "state"
    # as a user runs it: Prefect and MLflow in the state dir (earlier tests may have pointed these elsewhere)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_HOME", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    sets = [a for value in TINY for a in ("--set", value)]
    subprocess.run([sys.executable, "-m", "lifecycle.cli", "run", "--until", "validate", "--state-dir", str(state),
                    "--conf", str(CONF), *sets], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{state / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("llm-lifecycle").experiment_id
    run_name = client.search_runs([experiment], "tags.`lifecycle.role` = 'pipeline'")[0].info.run_name
    ports = {"prefect": free_port(), "mlflow": free_port()}
    ui = subprocess.Popen([sys.executable, "-m", "lifecycle.cli", "ui", "--state-dir", str(state), "--prefect-port",
                           str(ports["prefect"]), "--mlflow-port", str(ports["mlflow"])], cwd=ROOT,
                          env=env | {MARK: mark},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = [ui.stdout.readline() for _ in range(2)]
        assert lines[0].split() == ["prefect", f"http://127.0.0.1:{ports['prefect']}"], lines
        assert lines[1].split() == ["mlflow", f"http://127.0.0.1:{ports['mlflow']}"], lines

        browser.get(f"http://127.0.0.1:{ports['prefect']}/runs")
        wait_for(browser, lambda d: "pipeline-default" in d.find_element(By.TAG_NAME, "body").text,
                 "the pipeline's flow run in the Prefect UI's runs list", timeout_s=60)
        browser.get(f"http://127.0.0.1:{ports['mlflow']}/#/experiments/{experiment}/runs")
        wait_for(browser, lambda d: run_name in d.find_element(By.TAG_NAME, "body").text,
                 f"the parent run {run_name} in the MLflow UI", timeout_s=60)
        assert find(mark, "uvicorn", "mlflow.server") and not find(mark, "mlflow.server.jobs")
        assert not find(mark, "huey")  # the job runner's consumers
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        ui.wait(timeout=30)
    time.sleep(1)
    for port in ports.values():
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
