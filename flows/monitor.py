"""The `monitor` flow: the last window of served requests against the questions the served model was trained
and evaluated on (tasks/monitoring.py, lifecycle/monitor/); the hourly `monitor` deployment of
infra/prefect.yaml, and `lifecycle monitor`. Returns the outcome (figures, crossed thresholds, feedback per
version, the drifted questions' file) and the events it emitted."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from lifecycle.runtime import RunSettings
from tasks.monitoring import announce, measure, read_requests


@flow(name="monitor", flow_run_name="monitor")
def monitor(settings: RunSettings = RunSettings()) -> dict[str, Any]:
    cfg = settings.load()
    state_dir = settings.state(cfg)
    requests, window = read_requests(cfg, state_dir, int(time.time() * 1000))
    outcome = measure(cfg, state_dir, settings.profile, requests, window)
    return outcome.to_dict() | {"events": announce(cfg, settings.profile, outcome)}
