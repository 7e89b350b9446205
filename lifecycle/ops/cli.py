"""The operations commands of `lifecycle`:

    lifecycle ui [--prefect-port 4200] [--mlflow-port 5000]   # both dashboards over the state dir; Ctrl-C stops both
    lifecycle deploy [--name NAME]... [--repo DIR]             # infra/prefect.yaml's deployments -> PREFECT_API_URL
    lifecycle worker [--pool lifecycle-pool] [--run-once]      # a process worker that runs them
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_parsers(sub: argparse._SubParsersAction, config_args: Callable[..., None]) -> None:
    ui = sub.add_parser("ui", help="start the Prefect and MLflow dashboards over the state directory (loopback)")
    ui.add_argument("which", nargs="?", choices=["both", "prefect", "mlflow"], default="both")
    ui.add_argument("--state-dir")
    ui.add_argument("--prefect-port", type=int, default=4200)
    ui.add_argument("--mlflow-port", type=int, default=5000)
    deploy = sub.add_parser("deploy", help="register infra/prefect.yaml's deployments (with their schedules) on "
                                           "the Prefect server in PREFECT_API_URL, creating the work pool")
    deploy.add_argument("--name", dest="names", action="append", help="only this deployment (repeatable)")
    deploy.add_argument("--repo", type=Path, help="the checkout workers run the code from (default: this one)")
    deploy.add_argument("--api-url", help="the Prefect API (default: PREFECT_API_URL)")
    deploy.add_argument("--pool", help="put every deployment on this work pool (e.g. a Kubernetes pool made with "
                                       "infra/k8s/work-pool-template.json) instead of infra/prefect.yaml's")
    worker = sub.add_parser("worker", help="run a process worker for the deployments' work pool")
    worker.add_argument("--pool", default="lifecycle-pool")
    worker.add_argument("--api-url", help="the Prefect API (default: PREFECT_API_URL)")
    worker.add_argument("--run-once", action="store_true", help="run the scheduled runs due now, then exit")


def cmd_ui(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    from lifecycle.config import find_conf_dir, load_config
    from lifecycle.ops.ui import dashboards
    from lifecycle.runtime import resolve_state_dir
    from lifecycle.tracking import tracking_uri

    def stop(signum: int, frame: object) -> None:  # `kill`, a service manager: stop both servers as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also when started in the background, which ignores Ctrl-C by default
    state_dir = resolve_state_dir(args.state_dir, load_config(find_conf_dir(None)).run.state_dir)
    ports = {"prefect": args.prefect_port if args.which != "mlflow" else 0,
             "mlflow": args.mlflow_port if args.which != "prefect" else 0}
    with dashboards(state_dir, ports["prefect"], ports["mlflow"], tracking_uri(state_dir)) as ui:
        for name, url in ui.urls.items():
            print(f"{name:<8} {url}", flush=True)
        print(f"state directory: {state_dir} (logs in {state_dir / 'logs'}); Ctrl-C stops both", flush=True)
        try:
            stopped = ui.wait()
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
            return 0
    print(f"the {stopped} server stopped (see {state_dir / 'logs'}); stopped the other one too", file=sys.stderr)
    return 1


def cmd_deploy(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    from lifecycle.ops.deploy import deploy_all, register_automations, repo_root

    repo = (args.repo or repo_root()).resolve()
    for name in deploy_all(repo, args.api_url, names=args.names, pool=args.pool):
        print(f"deployed {name} (code in {repo})")
    for line in register_automations(repo, args.api_url):
        print(line)
    print("run them with: lifecycle worker   (or: prefect worker start --pool lifecycle-pool)")
    return 0


def cmd_worker(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    from lifecycle.ops.deploy import run_worker

    run_worker(args.pool, args.api_url, args.run_once)  # does not return: the process becomes the worker


HANDLERS = {"ui": cmd_ui, "deploy": cmd_deploy, "worker": cmd_worker}
