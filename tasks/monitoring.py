"""The `monitor` flow's tasks (flows/monitor.py): read the window of served requests from MLflow's traces,
measure it against the reference (lifecycle/monitor/measure.py) in an MLflow run of its own (figures as
`monitor/<figure>` metrics, the Evidently report, the drifted questions), publish the Prefect artifacts, and
emit the events infra/automations.yaml acts on when a threshold is crossed:

- `lifecycle.drift.detected` (resource `lifecycle.monitor.<profile>`; label `lifecycle.collect-preferences`
  "true" when monitor.collect_preferences.enabled and there are drifted questions), payload: the figures,
  the crossed thresholds, the window, `prompts_file` (the drifted questions) and the MLflow run;
- `lifecycle.feedback.degraded`, one per served version whose thumbs-down share is past the threshold.

Not a stage (no cache, nothing in the stage graph): hence tasks/monitoring.py, not tasks/monitor.py, which the
graph would take for the node of the `monitor` config section.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from lifecycle import names
from lifecycle.config import Config
from lifecycle.monitor.measure import Outcome, measure_window
from lifecycle.monitor.window import Request, read_window
from lifecycle.tracking import setup_mlflow, tracking_uri


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


@task(name="read-window", cache_policy=NO_CACHE)
def read_requests(cfg: Config, state_dir: Path, until_ms: int) -> tuple[list[Request], dict[str, Any]]:
    since_ms = until_ms - int(cfg.monitor.window_hours * 3600 * 1000)
    requests = read_window(setup_mlflow(state_dir, cfg.run.experiment), since_ms, until_ms)
    window = {"since": _iso(since_ms), "until": _iso(until_ms), "hours": cfg.monitor.window_hours,
              "requests": len(requests)}
    get_run_logger().info("monitor: %d served requests from %s to %s", len(requests), window["since"],
                          window["until"])
    return requests, window


@task(name="measure-window", cache_policy=NO_CACHE)
def measure(cfg: Config, state_dir: Path, profile: str, requests: list[Request], window: dict[str, Any]) -> Outcome:
    """Measure in an MLflow run of the run's experiment (tagged lifecycle.stage=monitor), its files logged."""
    logger = get_run_logger()
    out = state_dir / "monitor" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    experiment_id = setup_mlflow(state_dir, cfg.run.experiment)
    tags = {names.STAGE: "monitor", names.PROFILE: profile, "prefect.flow_run_id": str(flow_run.id)}
    with mlflow.start_run(run_name=f"monitor-{profile}-{time.strftime('%Y%m%d-%H%M%S')}",
                          experiment_id=experiment_id, tags=tags) as run:
        outcome = measure_window(cfg, state_dir, requests, window, out)
        mlflow.log_params({"window_since": window["since"], "window_until": window["until"],
                           "window_hours": window["hours"], "index": outcome.index or "none"})
        mlflow.log_metrics({names.metric("monitor", k): v for k, v in outcome.figures.items()} |
                           {names.metric("monitor", "requests"): len(requests),
                            names.metric("monitor", "alarms"): len(outcome.alarms)} |
                           {names.metric("monitor", f"negative_share/{f['version']}"): f["negative_share"]
                            for f in outcome.feedback if f["negative_share"] is not None})
        if out.is_dir():
            mlflow.log_artifacts(str(out), "monitor")
        outcome.window["mlflow_run_id"] = run.info.run_id
    for line in outcome.summary.splitlines()[:1]:
        logger.info("monitor: %s", line)
    for alarm in outcome.alarms:
        logger.warning("monitor: %s = %.4g crosses %s %s", alarm["figure"], alarm["value"], alarm["op"],
                       alarm["threshold"])
    create_markdown_artifact(key="monitor-summary", markdown=outcome.summary, description="served questions against "
                             "the reference: figures and thresholds, feedback per version")
    if out.is_dir():
        uri = tracking_uri(state_dir)
        link = (f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run.info.run_id}" if uri.startswith("http")
                else (out / "drift_report.html").resolve().as_uri())
        create_link_artifact(key="monitor-report", link=link, link_text="drift report",
                             description="the Evidently drift report and the drifted questions (MLflow run "
                                         f"{run.info.run_id}, artifacts monitor/)")
    return outcome


@task(name="announce", cache_policy=NO_CACHE)
def announce(cfg: Config, profile: str, outcome: Outcome) -> list[str]:
    """Emit the drift and feedback events (none without a crossed threshold); return their names."""
    from prefect.events import emit_event

    logger = get_run_logger()
    resource_id = f"{names.MONITOR_RESOURCE}.{profile}"
    collect = cfg.monitor.collect_preferences.enabled and outcome.prompts_file is not None
    base = {"profile": profile, "window": outcome.window, "index": outcome.index}
    emitted = []
    if outcome.alarms:
        emit_event(event=names.DRIFT_DETECTED,
                   resource={"prefect.resource.id": resource_id, names.PROFILE: profile,
                             names.COLLECT_PREFERENCES: str(collect).lower()},
                   payload=base | {"figures": outcome.figures, "crossed": outcome.alarms,
                                   "drifted_questions": len(outcome.drifted), "prompts_file": outcome.prompts_file})
        emitted.append(names.DRIFT_DETECTED)
    for found in outcome.degraded:
        emit_event(event=names.FEEDBACK_DEGRADED, resource={"prefect.resource.id": resource_id,
                                                             names.PROFILE: profile},
                   related=[{"prefect.resource.id": f"{names.MODEL_RESOURCE}.{found['version']}",
                             "prefect.resource.role": "model"}],
                   payload=base | {"feedback": found})
        emitted.append(names.FEEDBACK_DEGRADED)
    for name in emitted:
        logger.warning("monitor: emitted %s (resource %s)", name, resource_id)
    return emitted
