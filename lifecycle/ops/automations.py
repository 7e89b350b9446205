"""The Prefect automations of infra/automations.yaml, registered on the server in PREFECT_API_URL by
`lifecycle deploy` (in a process of its own, with that URL in its environment):

    python -m lifecycle.ops.automations infra/automations.yaml     # one line per automation, on stdout

Each automation is created, or updated in place when one of its name exists (deploying twice never makes two).
Its `notify` action sends through the notification block named by `notification_block`: made (or replaced) as a
webhook block posting {"text": "<subject>\\n<body>"} when LIFECYCLE_NOTIFY_WEBHOOK_URL is set, else whatever
notification block of that name exists (Slack, Teams, PagerDuty, email, ...: created by the user). Without
either, the automations that notify are skipped, and the line says why. The webhook URL is a secret: it is
stored in the block, never printed.
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
        missing = {"name", "trigger", "notify"} - set(found)
        if missing:
            raise ConfigError(f"{path}: automations[{i}] ({found.get('name', '?')}) lacks {', '.join(sorted(missing))}")
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


def automation(found: dict[str, Any], block_id: UUID) -> Any:
    from prefect.automations import Automation
    from prefect.events import EventTrigger
    from prefect.events.actions import SendNotification

    return Automation(name=found["name"], description=found.get("description", ""), enabled=True,
                      trigger=EventTrigger(**found["trigger"]),
                      actions=[SendNotification(block_document_id=block_id, **found["notify"])])


def register(spec: dict[str, Any]) -> list[str]:
    """Create or update every automation of `spec`; one line per automation saying what was done."""
    from prefect.automations import Automation

    block_id, how = notification_block(spec["notification_block"])
    lines = []
    for found in spec["automations"]:
        if block_id is None:
            lines.append(f"automation {found['name']}: not registered ({how})")
            continue
        wanted = automation(found, block_id)
        try:
            wanted.id = Automation.read(name=found["name"]).id
        except ValueError:  # none of that name yet
            wanted.create()
            lines.append(f"automation {found['name']}: created, notifying through the {how}")
        else:
            wanted.update()
            lines.append(f"automation {found['name']}: updated, notifying through the {how}")
    return lines


def main(argv: list[str]) -> int:
    [path] = argv
    for line in register(read_spec(Path(path))):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
