"""Register infra/prefect.yaml's deployments against the Prefect server in PREFECT_API_URL, and run a
worker for their pool. The code location is resolved when deploying (the repository this package runs
from, or `--repo`), not left to an environment variable on the worker's machine.

    deploy_all(repo=Path("."), api_url="http://127.0.0.1:4200/api")   # creates the work pool if needed
    register_automations(repo, api_url)                                # infra/automations.yaml (failure alerts)
    run_worker("lifecycle-pool", api_url)                              # this process becomes the worker
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import yaml

from lifecycle.errors import LifecycleError

log = logging.getLogger("lifecycle.ops")
PREFECT_FILE = Path("infra") / "prefect.yaml"
AUTOMATIONS_FILE = Path("infra") / "automations.yaml"


def repo_root() -> Path:
    """The checkout holding flows/ and tasks/ next to this package (an editable install or the image's /app)."""
    return Path(__file__).resolve().parents[2]


def prefect_command(*args: str) -> list[str]:
    """`prefect ...` through this interpreter: works from a venv that is not activated."""
    return [sys.executable, "-m", "prefect", *args]


def server_env(api_url: str | None) -> dict[str, str]:
    url = api_url or os.environ.get("PREFECT_API_URL")
    if not url:
        raise LifecycleError("no Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api, started with "
                             "`lifecycle ui` or `prefect server start`) or pass --api-url")
    return os.environ | {"PREFECT_API_URL": url}


def resolved_spec(repo: Path, prefect_file: Path) -> dict[str, Any]:
    """infra/prefect.yaml with the pull step pointing at `repo` (absolute) instead of a runtime variable."""
    path = prefect_file if prefect_file.is_absolute() else repo / prefect_file
    if not path.is_file():
        raise LifecycleError(f"deploy: {path} does not exist (run from the repository, or pass --repo)")
    spec = yaml.safe_load(path.read_text())
    spec["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": str(repo.resolve())}}]
    return spec


def pools_of(spec: dict[str, Any]) -> set[str]:
    return {d["work_pool"]["name"] for d in spec.get("deployments", []) if d.get("work_pool")}


def ensure_pool(name: str, env: dict[str, str]) -> None:
    """Create the process work pool `name` unless it exists."""
    found = subprocess.run(prefect_command("work-pool", "inspect", name), env=env, capture_output=True, text=True)
    if found.returncode == 0:
        return
    made = subprocess.run(prefect_command("work-pool", "create", name, "--type", "process"), env=env,
                          capture_output=True, text=True)
    if made.returncode != 0:
        raise LifecycleError(f"deploy: could not create work pool {name!r}: {made.stderr.strip()[-500:]}")
    log.info("created work pool %s (process)", name)


def deploy_all(repo: Path, api_url: str | None = None, prefect_file: Path = PREFECT_FILE,
               names: list[str] | None = None, pool: str | None = None) -> list[str]:
    """Register the deployments of `prefect_file` (all, or `names`), on `pool` instead of their own work pool
    when given (create a Kubernetes pool with infra/k8s/work-pool-template.json first: a missing pool is
    created as a process pool); returns their names."""
    env = server_env(api_url)
    spec = resolved_spec(repo, prefect_file)
    if pool:
        for deployment in spec["deployments"]:
            deployment.setdefault("work_pool", {})["name"] = pool
    wanted = [d["name"] for d in spec["deployments"] if not names or d["name"] in names]
    missing = sorted(set(names or []) - set(wanted))
    if missing:
        raise LifecycleError(f"deploy: no deployment named {missing} in {prefect_file} "
                             f"(there are: {', '.join(d['name'] for d in spec['deployments'])})")
    for pool in sorted(pools_of(spec)):
        ensure_pool(pool, env)
    # outside the checkout (read-only in the image): prefect deploy resolves entrypoints from its working dir
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="prefect-deploy-", delete=False) as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    try:
        selection = [a for n in wanted for a in ("--name", n)] if names else ["--all"]
        done = subprocess.run(prefect_command("--no-prompt", "deploy", "--prefect-file", f.name, *selection),
                              cwd=repo, env=env, capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise LifecycleError(f"deploy: `prefect deploy` failed:\n{(done.stdout + done.stderr).strip()[-2000:]}")
    return wanted


def register_automations(repo: Path, api_url: str | None = None,
                         automations_file: Path = AUTOMATIONS_FILE) -> list[str]:
    """infra/automations.yaml on the server (lifecycle/ops/automations.py, in a process with the server's URL);
    one line per automation."""
    path = automations_file if automations_file.is_absolute() else repo / automations_file
    done = subprocess.run([sys.executable, "-m", "lifecycle.ops.automations", str(path)], env=server_env(api_url),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise LifecycleError(f"deploy: registering {path} failed:\n{(done.stdout + done.stderr).strip()[-2000:]}")
    return done.stdout.strip().splitlines()


def run_worker(pool: str, api_url: str | None = None, run_once: bool = False) -> NoReturn:
    """Become `prefect worker start --pool POOL --type process` in the repository: the process is replaced
    (exec), so a SIGTERM from a supervisor or Ctrl-C reaches the worker itself and leaves no orphan."""
    args = ["worker", "start", "--pool", pool, "--type", "process"] + (["--run-once"] if run_once else [])
    command = prefect_command(*args)
    # Prefect's worker stops through KeyboardInterrupt, also on SIGTERM: a worker started from a background
    # job (which inherits SIGINT ignored, and exec keeps that) would never stop
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.chdir(repo_root())
    os.execve(command[0], command, server_env(api_url))
