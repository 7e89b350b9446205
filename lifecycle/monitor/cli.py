"""The `lifecycle monitor` command: the monitor flow once, now (what the hourly `monitor` deployment runs):

    lifecycle monitor [--profile P] [--set monitor.window_hours=24] [--state-dir DIR]

Prints the figures against their thresholds, each version's thumbs, the drifted questions' file and the events
emitted (with PREFECT_API_URL set, to that server, where infra/automations.yaml acts on them).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def add_parsers(sub: argparse._SubParsersAction, config_args: Callable[..., None]) -> None:
    monitor = sub.add_parser("monitor", help="the last window of served requests against the reference questions: "
                                             "drift, feedback per version, events past conf/monitor.yaml's thresholds")
    config_args(monitor, with_sources=False)
    monitor.add_argument("--json", action="store_true", help="print the outcome as JSON")


def cmd_monitor(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    from lifecycle.config import find_conf_dir
    from lifecycle.runtime import (RunSettings, configure_logging, no_heartbeats_on_temporary_api,
                                   prepare_environment, resolve_state_dir, start_embedded_api)

    cfg = load(args)
    state_dir = resolve_state_dir(args.state_dir, cfg.run.state_dir)
    prepare_environment(state_dir)
    api = start_embedded_api()
    from flows.monitor import monitor  # imports prefect: after PREFECT_HOME is set

    configure_logging()
    if api:
        api.wait()
    settings = RunSettings(profile=args.profile or "default", overrides=args.overrides, state_dir=str(state_dir),
                           conf_dir=str(find_conf_dir(args.conf).resolve()))
    with no_heartbeats_on_temporary_api():
        outcome = monitor(settings=settings)
    if args.json:
        print(json.dumps(outcome, indent=2))
        return 0
    print("\n" + outcome["summary"])
    for question in outcome["drifted"][:5]:
        print(f"  drifted: {question['prompt']!r} (nearest reference {question['nearest_similarity']}, "
              f"best chunk {question['best_score']})")
    if outcome["prompts_file"]:
        print(f"drifted questions ({len(outcome['drifted'])}): {outcome['prompts_file']}")
    print(f"events: {', '.join(outcome['events']) or 'none'}")
    return 0


HANDLERS = {"monitor": cmd_monitor}
