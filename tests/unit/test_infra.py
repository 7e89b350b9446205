"""infra/prefect.yaml stays in step with the code: entrypoints import, parameters fit the flow, crons parse."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from lifecycle.config import find_conf_dir, load_config
from lifecycle.stages import plan_stages

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_matches_flow(deployment: dict) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    module, _, name = deployment["entrypoint"].partition(":")
    flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)
    params = deployment["parameters"]
    flow.validate_parameters(params)  # raises on unknown or mistyped parameters
    profile = params.get("profile", params.get("settings", {}).get("profile", "default"))
    load_config(find_conf_dir(ROOT / "conf"), None if profile == "default" else profile)
    plan_stages(params.get("until"), params.get("from_stage"))
    for schedule in deployment.get("schedules", []):
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
