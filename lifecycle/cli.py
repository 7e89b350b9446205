"""The `lifecycle` command.

    lifecycle run --profile quickstart [--until STAGE] [--from STAGE] [--source PATH]... [--set a.b=c]...
    lifecycle config --profile quickstart          # print the resolved configuration
    lifecycle ui mlflow|prefect                     # dashboards over the state directory

User errors (bad config, bad input, failed validation) print a message and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from lifecycle.errors import LifecycleError

log = logging.getLogger("lifecycle")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="overlay conf/profiles/NAME.yaml (e.g. quickstart)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one value, e.g. --set tokenize.vocab_size=1024 (repeatable)")
    p.add_argument("--source", dest="sources", action="append", default=[], metavar="PATH_OR_GLOB",
                   help="replace the configured sources for this run (repeatable; 'python-docs' for the stdlib docs)")
    p.add_argument("--conf", help="configuration folder (default: ./conf)")
    p.add_argument("--state-dir", help="where runs, artifacts and caches live (default: LIFECYCLE_HOME or .lifecycle)")


def build_parser() -> argparse.ArgumentParser:
    from lifecycle.stages import STAGES

    parser = argparse.ArgumentParser(prog="lifecycle", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline as one Prefect flow run tracked in MLflow")
    _config_args(run)
    run.add_argument("--until", choices=list(STAGES), help="run this stage and what it needs, then stop")
    run.add_argument("--from", dest="from_stage", choices=list(STAGES),
                     help="reuse cached outputs of earlier stages; recompute this stage and its dependants")
    show = sub.add_parser("config", help="print the resolved configuration as YAML")
    _config_args(show)
    ui = sub.add_parser("ui", help="start a dashboard over the state directory")
    ui.add_argument("which", choices=["mlflow", "prefect"])
    ui.add_argument("--state-dir")
    ui.add_argument("--port", type=int)
    return parser


def load(args: argparse.Namespace):  # -> Config (imported lazily to keep `--help` fast)
    from lifecycle.config import find_conf_dir, load_config

    return load_config(find_conf_dir(args.conf), args.profile, args.overrides, args.sources)


def cmd_run(args: argparse.Namespace) -> int:
    from lifecycle.config import find_conf_dir
    from lifecycle.data.sources import check_sources
    from lifecycle.runtime import configure_logging, prepare_environment, resolve_state_dir
    from lifecycle.stages import plan_stages

    cfg = load(args)
    plan_stages(args.until, args.from_stage)  # fail on a bad combination before starting anything
    check_sources(cfg.ingest.sources)
    state_dir = resolve_state_dir(args.state_dir, cfg.run.state_dir)
    prepare_environment(state_dir)
    from flows.pipeline import pipeline  # imports prefect: after PREFECT_HOME is set

    _hide_user_error_tracebacks()
    configure_logging()
    outputs = pipeline(profile=args.profile or "default", overrides=args.overrides, sources=args.sources,
                       until=args.until, from_stage=args.from_stage, state_dir=str(state_dir),
                       conf_dir=str(find_conf_dir(args.conf).resolve()))
    print(f"\nstate directory: {state_dir}")
    for stage, out in outputs.items():
        print(f"  {stage:<10} {'cached ' if out['cached'] else 'computed'}  {out['path']}")
    print(f"MLflow UI:  lifecycle ui mlflow --state-dir {state_dir}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(load(args).dump(), sort_keys=False), end="")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from lifecycle.config import find_conf_dir, load_config
    from lifecycle.runtime import prepare_environment, resolve_state_dir
    from lifecycle.tracking import tracking_uri

    state_dir = resolve_state_dir(args.state_dir, load_config(find_conf_dir(None)).run.state_dir)
    prepare_environment(state_dir)
    if args.which == "mlflow":
        argv = ["mlflow", "ui", "--backend-store-uri", tracking_uri(state_dir), "--host", "127.0.0.1",
                "--port", str(args.port or 5000)]
    else:
        argv = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(args.port or 4200)]
    print(" ".join(argv), file=sys.stderr)
    os.execvp(argv[0], argv)
    return 0


class _NoUserErrorTraceback(logging.Filter):
    """Prefect logs task failures with a traceback; for a user error the message is the whole story."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], LifecycleError):
            record.exc_info = None
            record.exc_text = None
        return True


def _hide_user_error_tracebacks() -> None:
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_NoUserErrorTraceback())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "config": cmd_config, "ui": cmd_ui}
    try:
        return handlers[args.command](args)
    except LifecycleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
