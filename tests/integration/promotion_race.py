"""Hand promotions racing from several machines (one state dir, so one lock folder, each) against the MLflow
and Prefect servers in the environment; prints {"errors": [...], "champions": [...], "chain": [...]} as JSON.
Used by tests/integration/test_production.py: `python tests/integration/promotion_race.py ROOT NAME V1 V2...`:
V1 is promoted first, then one thread per other version promotes it at the same moment."""

import json
import sys
import threading
from pathlib import Path

from lifecycle.config import load_config
from lifecycle.evaluate.promotion import promote_by_hand
from lifecycle.registry import CHAMPION, PREVIOUS, ModelRef, get_alias, list_versions, version_tags
CONF = Path(__file__).resolve().parents[2] / "conf"  # not tests.conftest: it clears the servers from the environment

if __name__ == "__main__":
    root, name, first, *others = sys.argv[1:]
    cfg = load_config(CONF, overrides=[f"run.models.chat={name}"])
    promote_by_hand(cfg, Path(root) / "machine-0", first, reason="start")
    barrier, errors = threading.Barrier(len(others)), []

    def promote(machine: int, version: str) -> None:
        barrier.wait()
        try:
            promote_by_hand(cfg, Path(root) / f"machine-{machine}", version, reason=f"race {version}")
        except Exception as err:  # noqa: BLE001 - reported to the test
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=promote, args=(i, v)) for i, v in enumerate(others, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    chain, current = [], get_alias(name, CHAMPION)
    while current is not None:
        chain.append(current.version)
        previous = version_tags(current)[PREVIOUS]
        current = None if previous == "none" else ModelRef(*previous.split("/"))
    champions = [v["version"] for v in list_versions(name) if CHAMPION in v["aliases"]]
    print(json.dumps({"errors": errors, "champions": champions, "chain": chain}))
