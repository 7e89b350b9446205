"""The registry commands of `lifecycle`:

    lifecycle models [--json]                       # versions of the chat model, aliases, decisions
    lifecycle promote VERSION --reason TEXT         # make VERSION (or NAME/VERSION, NAME@ALIAS) @champion by hand
    lifecycle rollback [--reason TEXT]              # restore the champion the current one replaced

Each move is recorded: tags on the version (who, why, the champion it replaced) and an MLflow run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def add_parsers(sub: argparse._SubParsersAction, config_args: Callable[..., None]) -> None:
    models = sub.add_parser("models", help="registered versions of the chat model: aliases and promotion decisions")
    config_args(models, with_sources=False)
    models.add_argument("--name", help="a registered model name (default: run.models.chat)")
    models.add_argument("--json", action="store_true", help="print JSON")
    promote = sub.add_parser("promote", help="make a version @champion by hand, bypassing the gate (recorded)")
    config_args(promote, with_sources=False)
    promote.add_argument("version", help="VERSION, NAME/VERSION or NAME@ALIAS (e.g. 7, lifecycle-gpt@challenger)")
    promote.add_argument("--reason", required=True, help="why: stored with the version and the decision record")
    rollback = sub.add_parser("rollback", help="restore the previous @champion (recorded)")
    config_args(rollback, with_sources=False)
    rollback.add_argument("--reason", default="rollback", help="why: stored with the version")


def _state(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> tuple[Any, Any]:
    from lifecycle.runtime import quiet_environment, resolve_state_dir
    from lifecycle.tracking import use_tracking

    cfg = load(args)
    quiet_environment()
    state_dir = resolve_state_dir(args.state_dir, cfg.run.state_dir)
    use_tracking(state_dir)
    return cfg, state_dir


def cmd_models(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    from lifecycle.evaluate.promotion import model_table
    from lifecycle.registry import list_versions

    cfg, _ = _state(args, load)
    versions = list_versions(args.name or cfg.run.models.chat)
    print(json.dumps(versions, indent=2) if args.json else model_table(versions))
    return 0


def cmd_promote(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    from lifecycle.evaluate.promotion import promote_by_hand

    cfg, state_dir = _state(args, load)
    found = promote_by_hand(cfg, state_dir, args.version, args.reason)
    print(f"{found['candidate']} is now @champion (was {found['champion']}); recorded in MLflow run {found['run_id']}")
    return 0


def cmd_rollback(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    from lifecycle.evaluate.promotion import rollback

    cfg, state_dir = _state(args, load)
    found = rollback(cfg, state_dir, args.reason)
    print(f"@champion is back on {found['champion']} (rolled back {found['rolled_back']}); recorded in MLflow run "
          f"{found['run_id']}")
    return 0


HANDLERS = {"models": cmd_models, "promote": cmd_promote, "rollback": cmd_rollback}
