"""`lifecycle ui`: the Prefect server and the MLflow UI together, on loopback, over the state directory the
embedded defaults wrote (Prefect's SQLite database under <state>/prefect, MLflow's under <state>/mlflow).
Both are children of this process, bound to it (lifecycle.children: they and what they start end with it,
even when it is killed): Ctrl-C (or either one dying) stops both. The MLflow UI runs without MLflow's job
runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION, unless set: its GenAI jobs, LLM-judge scoring and prompt
optimisation, have no use over a state dir), which would start about ten more processes and 30 s of CPU.

    with dashboards(state_dir, 4200, 5000, tracking_uri(state_dir)) as ui:   # returns once both answer
        ui.urls["prefect"], ui.urls["mlflow"]; ui.wait()                      # until one exits or Ctrl-C
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from lifecycle.children import start_bound, stop
from lifecycle.errors import LifecycleError
from lifecycle.prefect_api import seed_from_template

HOST = "127.0.0.1"
JOBS = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


@dataclass(frozen=True)
class Dashboards:
    urls: dict[str, str]
    procs: dict[str, subprocess.Popen]

    def wait(self, poll_s: float = 1.0) -> str:
        """Block until one server exits; return its name (Ctrl-C raises KeyboardInterrupt)."""
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    return name
            time.sleep(poll_s)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def _server(argv: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = start_bound(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        stop(proc)


def _wait_until_answers(name: str, proc: subprocess.Popen, argv: list[str], health: str, log_path: Path,
                        deadline: float) -> None:
    while not _answers(health):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise LifecycleError(f"ui: the {name} server did not start ({' '.join(argv[2:6])}...); its log "
                                 f"{log_path} ends with:\n{tail}")
        time.sleep(0.2)


@contextmanager
def dashboards(state_dir: Path, prefect_port: int, mlflow_port: int, tracking_uri: str,
               timeout_s: float = 120) -> Iterator[Dashboards]:
    """Start both servers (a port of 0 leaves that one out) and yield them once they answer; stop them on exit."""
    env = os.environ | {"PREFECT_HOME": str(Path(state_dir) / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "PREFECT_UI_API_URL": f"http://{HOST}:{prefect_port}/api"}
    env.pop("PREFECT_API_URL", None)  # the server serves the state dir's database, not another server's
    if prefect_port and "PREFECT_API_DATABASE_CONNECTION_URL" not in env:  # a new one: migrated already
        seed_from_template(Path(state_dir) / "prefect" / "prefect.db")
    logs = Path(state_dir) / "logs"
    prefect = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(prefect_port)]
    mlflow = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", HOST,
              "--port", str(mlflow_port), "--workers", "1"]
    specs = {"prefect": (prefect_port, prefect, "/api/health", env),
             "mlflow": (mlflow_port, mlflow, "/health", env | {JOBS: env.get(JOBS, "false")})}
    servers = {name: spec for name, spec in specs.items() if spec[0]}  # port 0: not this one
    urls = {name: f"http://{HOST}:{port}" for name, (port, *_) in servers.items()}
    log_paths = {name: logs / f"{name}-server.log" for name in servers}
    with ExitStack() as stack:
        procs = {name: stack.enter_context(_server(argv, server_env, log_paths[name]))
                 for name, (_, argv, _, server_env) in servers.items()}  # both start at once
        deadline = time.monotonic() + timeout_s
        for name, (_, argv, health, _) in servers.items():
            _wait_until_answers(name, procs[name], argv, urls[name] + health, log_paths[name], deadline)
        yield Dashboards(urls, procs)
