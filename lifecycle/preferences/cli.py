"""The preference commands of `lifecycle`:

    lifecycle annotate [--host 127.0.0.1] [--port 8765]      # the annotation app over the preference store
    lifecycle annotators add NAME | list | revoke NAME        # add prints the sign-in token, once
    lifecycle preferences status [BATCH]                      # progress and quality statistics (JSON)
    lifecycle preferences resume [BATCH] [--note TEXT]        # resume the flow run waiting for a batch
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lifecycle.errors import LifecycleError

ConfigArgs = Callable[..., None]


def add_parsers(sub: argparse._SubParsersAction, config_args: ConfigArgs) -> None:
    annotate = sub.add_parser("annotate", help="serve the annotation app: people compare two answers and vote")
    config_args(annotate, with_sources=False)
    annotate.add_argument("--host", help="default: annotate.host (127.0.0.1)")
    annotate.add_argument("--port", type=int, help="default: annotate.port")
    people = sub.add_parser("annotators", help="manage annotators: add prints a sign-in token (only its hash is kept)")
    config_args(people, with_sources=False)
    people.add_argument("action", choices=["add", "list", "revoke"])
    people.add_argument("name", nargs="?")
    prefs = sub.add_parser("preferences", help="preference batches: status, or resume the flow run waiting for one")
    config_args(prefs, with_sources=False)
    prefs.add_argument("action", choices=["status", "resume"])
    prefs.add_argument("batch", nargs="?", help="batch id (default: the newest batch a flow run waits for)")
    prefs.add_argument("--note", default="", help="resume: a note recorded with the resumed run")


def _open(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> tuple[Any, Any, Path]:
    from lifecycle.preferences.db import store_url
    from lifecycle.preferences.store import PreferenceStore
    from lifecycle.runtime import prepare_environment, resolve_state_dir

    cfg = load(args)
    state_dir = resolve_state_dir(args.state_dir, cfg.run.state_dir)
    prepare_environment(state_dir)
    return cfg, PreferenceStore.open(store_url(cfg.annotate.store_url, state_dir)), state_dir


def cmd_annotate(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    import logging

    from lifecycle.preferences.app import create_app, run_server
    from lifecycle.preferences.resume import on_batch_complete  # imports prefect only when it resumes
    from lifecycle.runtime import start_embedded_api

    cfg, store, _ = _open(args, load)
    api = start_embedded_api()  # for the resume: bound to this process, not Prefect's own server (atexit only)

    def on_complete(summary: dict[str, Any]) -> None:
        if api:
            api.wait()
        on_batch_complete(summary)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    host, port = args.host or cfg.annotate.host, args.port or cfg.annotate.port
    print(f"annotation app: http://{host}:{port}/  (API docs: /docs; stop with Ctrl-C)", file=sys.stderr)
    run_server(create_app(store, cfg.annotate, on_complete=on_complete), host, port)
    return 0


def cmd_annotators(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    _, store, _ = _open(args, load)
    if args.action == "list":
        print(json.dumps(store.annotators(), indent=2))
        return 0
    if not args.name:
        raise LifecycleError(f"lifecycle annotators {args.action}: give the annotator's NAME")
    if args.action == "revoke":
        store.revoke_annotator(args.name)
        print(f"revoked {args.name}: their token no longer signs in", file=sys.stderr)
        return 0
    token = store.add_annotator(args.name)
    print(f"annotator {args.name} added; their sign-in token (shown once, only its hash is stored):", file=sys.stderr)
    print(token)
    return 0


def cmd_preferences(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    from lifecycle.preferences.summary import batch_summary
    from lifecycle.runtime import start_embedded_api

    _, store, _ = _open(args, load)
    batch_id = args.batch or _waiting_batch(store, args.action == "resume")
    if args.action == "status":
        ids = [batch_id] if batch_id else [b.id for b in store.batches()]
        print(json.dumps([batch_summary(store, i) for i in ids], indent=2))
        return 0
    summary = batch_summary(store, batch_id)
    api = start_embedded_api()  # as in cmd_annotate
    from lifecycle.preferences.resume import resume_batch

    if api:
        api.wait()
    flow_run_id = resume_batch(summary, "lifecycle preferences resume", args.note, wait_s=5.0)
    print(f"resumed flow run {flow_run_id} for batch {batch_id} ({summary['votes']} of {summary['quota']} votes)",
          file=sys.stderr)
    return 0


def _waiting_batch(store: Any, required: bool) -> str | None:
    waiting = [b for b in store.batches() if b.flow_run_id and b.status in ("open", "complete")]
    if waiting:
        return waiting[-1].id
    if required:
        raise LifecycleError("no preference batch is waiting for a flow run; name one (`lifecycle preferences "
                             "status` lists them)")
    return None


HANDLERS = {"annotate": cmd_annotate, "annotators": cmd_annotators, "preferences": cmd_preferences}
