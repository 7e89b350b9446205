"""The registry commands of `lifecycle`:

    lifecycle models [--json]                       # versions of the chat model, aliases, decisions
    lifecycle promote VERSION --reason TEXT         # make VERSION (or NAME/VERSION, NAME@ALIAS) @champion by hand
    lifecycle promote --from-canary                 # @challenger, if its live numbers pass promote.canary
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
    models.add_argument("--live", action="store_true", help="with what serving saw of the champion and the "
                        "challenger: answers, thumbs up, compare wins (traces and chat feedback)")
    promote = sub.add_parser("promote", help="make a version @champion by hand, bypassing the gate, or the canary's "
                                             "challenger on its live numbers (recorded)")
    config_args(promote, with_sources=False)
    promote.add_argument("version", nargs="?", help="VERSION, NAME/VERSION or NAME@ALIAS (e.g. 7, "
                                                    "lifecycle-gpt@challenger)")
    promote.add_argument("--reason", help="why (required by hand): stored with the version and the decision record")
    promote.add_argument("--from-canary", action="store_true", help="promote @challenger only if its live numbers "
                         "while serve.traffic sent it part of the requests pass promote.canary")
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
    from lifecycle.evaluate.promotion import live_numbers, live_table, model_table
    from lifecycle.registry import list_versions

    cfg, state_dir = _state(args, load)
    name = args.name or cfg.run.models.chat
    versions = list_versions(name)
    served = [f"{name}/{v['version']}" for v in versions if {"champion", "challenger"} & set(v["aliases"])]
    live = live_numbers(cfg, state_dir, served) if args.live else {}
    if args.json:
        print(json.dumps([v | ({"live": live_json(live[ref])} if (ref := f"{name}/{v['version']}") in live else {})
                          for v in versions], indent=2))
    else:
        print(model_table(versions) + (f"\n\n{live_table(live)}" if live else ""))
    return 0


def live_json(numbers: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import asdict

    return {"answers": numbers["answers"], "feedback": asdict(numbers["feedback"]) if numbers["feedback"] else None}


def cmd_promote(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    from lifecycle.errors import ConfigError
    from lifecycle.evaluate.promotion import number, promote_by_hand, promote_from_canary

    if args.from_canary == bool(args.version):
        raise ConfigError("promote: give a VERSION (with --reason) or --from-canary, not both")
    cfg, state_dir = _state(args, load)
    if args.from_canary:
        found = promote_from_canary(cfg, state_dir)
        for rule in found["rules"]:
            verdict = {True: "pass", False: "FAIL", None: "skipped"}[rule["passed"]]
            print(f"  {verdict:<7} {rule['rule']}: {number(rule['value'])} {rule['op']} {rule['threshold']} "
                  f"({rule['detail']})")
        if not found["passed"]:
            print(f"{found['candidate']} was REFUSED: @champion stays on {found['champion']}; recorded in MLflow run "
                  f"{found['run_id']}")
            return 1
    else:
        found = promote_by_hand(cfg, state_dir, args.version, args.reason or "")
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
