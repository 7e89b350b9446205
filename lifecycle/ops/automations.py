"""The Prefect automations of infra/automations.yaml, registered on the server in PREFECT_API_URL by
`lifecycle deploy` (in a process of its own, with that URL in its environment):

    python -m lifecycle.ops.automations infra/automations.yaml     # one line per automation, on stdout

Each automation is created, or updated in place when one of its name exists (deploying twice never makes two).
Its `notify` action sends through the notification block named by `notification_block`: made (or replaced) as a
webhook block posting {"text": "<subject>\\n<body>"} when LIFECYCLE_NOTIFY_WEBHOOK_URL is set, else whatever
notification block of that name exists (Slack, Teams, PagerDuty, email, ...: created by the user). Without
either, the automations that notify are skipped, and the line says why. The webhook URL is a secret: it is
stored in the block, never printed. A `run_deployment` action runs the deployment it names (FLOW/DEPLOYMENT,
resolved to its id now: deploy infra/prefect.yaml first) with `parameters`, which may be Jinja over the
triggering event (`{{ event.payload.prompts_file }}`); `enabled: false` registers an automation switched off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

from lifecycle.errors import ConfigError

WEBHOOK_ENV = "LIFECYCLE_NOTIFY_WEBHOOK_URL"


def read_spec(path: Path) -> dict[str, Any]:
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("automations"), list):
        raise ConfigError(f"{path}: expected `notification_block` and a list `automations`, got {type(spec).__name__}")
    for i, found in enumerate(spec["automations"]):
        missing = {"name", "trigger"} - set(found)
        if missing or not {"notify", "run_deployment"} & set(found):
            lacks = ", ".join(sorted(missing) + ([] if {"notify", "run_deployment"} & set(found)
                                                 else ["notify or run_deployment"]))
            raise ConfigError(f"{path}: automations[{i}] ({found.get('name', '?')}) lacks {lacks}")
        if "run_deployment" in found and "deployment" not in (found["run_deployment"] or {}):
            raise ConfigError(f"{path}: automations[{i}] ({found['name']}) run_deployment lacks `deployment` "
                              "(FLOW/DEPLOYMENT, e.g. preferences/collect-preferences)")
    return spec


def notification_block(name: str) -> tuple[UUID | None, str]:
    """(the id of the block to notify through, how it was found); (None, why) when there is none."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    url = os.environ.get(WEBHOOK_ENV)
    if url:
        block = CustomWebhookNotificationBlock(name=name, url=url, method="POST",
                                               json_data={"text": "{{subject}}\n{{body}}"})
        return block.save(name, overwrite=True), f"webhook block {name!r} from {WEBHOOK_ENV}"
    with get_client(sync_client=True) as client:
        for document in client.read_block_documents(include_secrets=False):
            if document.name == name and "notify" in (document.block_schema.capabilities if document.block_schema
                                                      else []):
                return document.id, f"notification block {name!r} ({document.block_type.slug})"
    return None, (f"no notification block {name!r}: set {WEBHOOK_ENV} (a webhook URL) or create a notification "
                  f"block named {name!r}, and deploy again")


def deployment_id(name: str) -> UUID | None:
    """The id of deployment FLOW/DEPLOYMENT on the server, None when it is not deployed."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name).id
        except ObjectNotFound:
            return None


def automation(found: dict[str, Any], block_id: UUID | None, deployment: UUID | None = None) -> Any:
    """The Prefect automation of one entry: its notification through `block_id`, its deployment run of
    `deployment` (the id of run_deployment.deployment)."""
    from prefect.automations import Automation
    from prefect.events import EventTrigger
    from prefect.events.actions import RunDeployment, SendNotification

    actions: list[Any] = [SendNotification(block_document_id=block_id, **found["notify"])] if "notify" in found else []
    if "run_deployment" in found:
        actions.append(RunDeployment(source="selected", deployment_id=deployment,
                                     parameters=found["run_deployment"].get("parameters")))
    return Automation(name=found["name"], description=found.get("description", ""),
                      enabled=found.get("enabled", True), trigger=EventTrigger(**found["trigger"]), actions=actions)


def missing_parts(found: dict[str, Any], block_id: UUID | None, deployment: UUID | None, how: str) -> str | None:
    """Why `found` cannot be registered (its block or its deployment is missing), None when it can."""
    if "notify" in found and block_id is None:
        return how
    if "run_deployment" in found and deployment is None:
        return (f"deployment {found['run_deployment']['deployment']} is not on the server: deploy infra/prefect.yaml "
                "first (`lifecycle deploy` does both)")
    return None


def register(spec: dict[str, Any]) -> list[str]:
    """Create or update every automation of `spec`; one line per automation saying what was done."""
    from prefect.automations import Automation

    block_id, how = notification_block(spec["notification_block"])
    lines = []
    for found in spec["automations"]:
        deployment = deployment_id(found["run_deployment"]["deployment"]) if "run_deployment" in found else None
        if why := missing_parts(found, block_id, deployment, how):
            lines.append(f"automation {found['name']}: not registered ({why})")
            continue
        wanted = automation(found, block_id, deployment)
        what = ", ".join(([f"notifying through the {how}"] if "notify" in found else []) +
                         ([f"running {found['run_deployment']['deployment']}"] if "run_deployment" in found else []))
        what += "" if wanted.enabled else " (disabled: enabled: false)"
        try:
            wanted.id = Automation.read(name=found["name"]).id
        except ValueError:  # none of that name yet
            wanted.create()
            lines.append(f"automation {found['name']}: created, {what}")
        else:
            wanted.update()
            lines.append(f"automation {found['name']}: updated, {what}")
    return lines


def main(argv: list[str]) -> int:
    [path] = argv
    for line in register(read_spec(Path(path))):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
