"""The `lifecycle serve` command:

    lifecycle serve [--host 127.0.0.1] [--port 8000] [--model NAME@ALIAS|NAME/VERSION] [--no-reload]

Serves run.models.chat @champion (or --model) with its paired RAG index: the chat page at /, the OpenAI-shaped
API under /v1 (base URL for the `openai` client), /health. Traces go to the run's experiment in the state
directory's MLflow; feedback from the page to the preference store (annotate.store_url, else SQLite).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

ConfigArgs = Callable[..., None]


def add_parsers(sub: argparse._SubParsersAction, config_args: ConfigArgs) -> None:
    serve = sub.add_parser("serve", help="serve the chat model @champion with RAG: OpenAI-shaped API + chat page")
    config_args(serve, with_sources=False)
    serve.add_argument("--host", help="default: serve.server.host (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: serve.server.port")
    serve.add_argument("--model", help="a registry reference NAME@ALIAS (followed when it moves) or NAME/VERSION "
                                       "(pinned); default: the chat model @champion")
    serve.add_argument("--no-reload", action="store_true", help="do not follow alias moves")


def cmd_serve(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    from pathlib import Path

    from lifecycle.errors import LifecycleError
    from lifecycle.runtime import configure_logging, quiet_environment, resolve_state_dir
    from lifecycle.tracking import setup_mlflow, tracking_uri

    cfg = load(args)
    state_dir = resolve_state_dir(args.state_dir, cfg.run.state_dir)
    quiet_environment()
    if tracking_uri(state_dir).startswith("sqlite:") and not (Path(state_dir) / "mlflow" / "mlflow.db").is_file():
        raise LifecycleError(f"no model registry in {state_dir}: run the pipeline first (`lifecycle run --state-dir "
                             f"{state_dir}`), then promote a model (`lifecycle promote VERSION --reason ...`)")
    configure_logging()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from lifecycle.preferences.app import run_server
    from lifecycle.preferences.db import store_url
    from lifecycle.preferences.store import PreferenceStore
    from lifecycle.serve.app import create_app
    from lifecycle.serve.models import ServedModels

    experiment_id = setup_mlflow(state_dir, cfg.run.experiment)
    models = ServedModels(state_dir, cfg.run.models.chat, cfg.serve, args.model)
    models.load()
    store = PreferenceStore.open(store_url(cfg.annotate.store_url, state_dir))
    server = cfg.serve.server
    api_key = os.environ.get(server.api_key_env) or None
    host, port = args.host or server.host, args.port or server.port
    app = create_app(models, cfg.serve, store, experiment_id, api_key, reload=not args.no_reload)
    base = server.public_url or f"http://{host}:{port}"
    served = ", ".join(f"{s.label} = {s.ref}" for s in models.all().values())
    key = f"${server.api_key_env}" if api_key else "none"
    lines = [f"serving {served}", f"  chat page:  {base}/",
             f"  OpenAI API: {base}/v1  (model \"{models.name}\"; key: {key})",
             f"  health:     {base}/health",
             f"  metrics:    {base}/metrics  (Prometheus{', with the same key' if api_key else ''})"]
    share = cfg.serve.traffic.challenger_share
    if share and "challenger" in models.all():
        lines.append(f"  canary:     {share:.0%} of the requests that name no version go to the challenger")
    lines += [f"  traces:     lifecycle ui mlflow --state-dir {state_dir}  (experiment {cfg.run.experiment})",
              "stop with Ctrl-C"]
    print("\n".join(lines), file=sys.stderr)
    run_server(app, host, port)
    return 0


HANDLERS = {"serve": cmd_serve}
